"""The checks every request passes before a route sees it: the API key, the declared body size.

A declared length over the limit is refused before anything is read; a body of no declared length
is counted as it arrives and refused once over (FastAPI's own `max_body_size` would answer in plain
text, where every other refusal of this service is JSON).

A pure ASGI middleware (not a route dependency) so that it covers every path, `/docs`, the
OpenAPI schema and unknown paths included. Keys are compared with `hmac.compare_digest`
against every configured key, so the time taken tells nothing about how much of a key matched.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable

from starlette.exceptions import HTTPException

OPEN_PATHS = frozenset({"/healthz"})  # answers without a key: a liveness probe carries no credentials


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI's body parsing passes it on to the 413 handler."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes")


class RequestGuard:
    def __init__(self, app: Any, *, api_keys: tuple[str, ...], max_body_bytes: int):
        self.app = app
        self.keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.keys and path not in OPEN_PATHS and not self._authorized(headers):
            await _reply(send, 401, "missing or invalid API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                         [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get("content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, 413, f"request body of {declared} bytes is over the limit of {self.max_body_bytes} bytes")
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, counted_receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", b"")
        if offered is None and auth[:7].lower() == b"bearer ":
            offered = auth[7:].strip()
        if not offered:
            return False
        matched = False
        for key in self.keys:  # no early exit: every key is compared
            matched |= hmac.compare_digest(offered, key)
        return matched


async def _reply(send: Callable, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
