"""The checks every request passes before a route sees it: the API key, the declared body size.

Every request gets an id here (`scope["state"]["request_id"]`, and the X-Request-ID header of the response),
which error bodies carry and the log names.

A declared length over the limit is refused before anything is read; a body of no declared length
is counted as it arrives and refused once over (FastAPI's own `max_body_size` would answer in plain
text, where every other refusal of this service is JSON).

A pure ASGI middleware (not a route dependency) so that it covers every path, `/docs`, the
OpenAPI schema and unknown paths included. The guard holds the keys' SHA-256 digests only; the digest
of the key offered is compared with `hmac.compare_digest` against every one, so the time taken tells
nothing about how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any, Callable

from starlette.exceptions import HTTPException

OPEN_PATHS = frozenset({"/healthz"})  # answers without a key: a liveness probe carries no credentials


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI's body parsing passes it on to the 413 handler."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes")


def key_digest(key: str | bytes) -> str:
    """What the service keeps of a key (and hands to worker processes): its SHA-256, never the key."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


class RequestGuard:
    def __init__(self, app: Any, *, key_digests: tuple[str, ...], max_body_bytes: int):
        self.app = app
        self.digests = [digest.encode() for digest in key_digests]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.digests and path not in OPEN_PATHS and not self._authorized(headers):
            await _reply(send, rid, 401, "missing or invalid API key: send `Authorization: Bearer KEY` or "
                         "`X-API-Key: KEY`", [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get("content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, rid, 413, f"request body of {declared} bytes is over the limit of "
                         f"{self.max_body_bytes} bytes")
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, counted_receive, send_with_id)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        """Every credential sent must be a key (a wrong one beside a right one is refused, not ignored)."""
        offered = [headers["x-api-key"]] if "x-api-key" in headers else []
        if "authorization" in headers:
            auth = headers["authorization"]
            offered.append(auth[7:].strip() if auth[:7].lower() == b"bearer " else b"")
        return bool(offered) and all(self._known(key) for key in offered)

    def _known(self, offered: bytes) -> bool:
        offered_digest = key_digest(offered).encode()
        matched = False
        for digest in self.digests:  # no early exit: every key is compared
            matched |= hmac.compare_digest(offered_digest, digest)
        return matched and bool(offered)


async def _reply(send: Callable, rid: str, status: int, message: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message, "request_id": rid}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", rid.encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
