"""How the service answers what goes wrong, and how the OpenAPI schema says so.

Every error body is an `ErrorBody`: what went wrong in words, the field at fault, and the request id.
The node's address and OpenSearch's raw causes never reach a client: they go to the log under that id.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.exceptions import HTTPException

from ..errors import (
    ConnectionFailedError,
    IndexMismatchError,
    IndexNotFoundError,
    InputError,
    MMRagError,
    ModelNotAvailableError,
    OpenSearchRequestError,
)
from .schemas import ErrorBody

logger = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[MMRagError], int]] = [  # the first match wins: subclasses before their bases
    (ConnectionFailedError, 503),
    (ModelNotAvailableError, 503),
    (IndexNotFoundError, 404),
    (IndexMismatchError, 409),
    (InputError, 422),
    (OpenSearchRequestError, 502),
    (MMRagError, 500),
]
# The words a client may see of why the node could not be reached (store.errors puts them in its messages).
REACH_REASONS = ("connection refused", "host name not found", "timed out", "connection reset by the node",
                 "the node closed the connection", "network unreachable", "refused the credentials", "TLS verification")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s,;)'\"]+", re.IGNORECASE)

# The schema's security schemes; the check itself is RequestGuard's (it covers /docs and unknown paths too).
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: KEY`")

DESCRIPTIONS = {
    400: "Malformed JSON", 401: "Missing or invalid API key", 404: "No such paper, or no index behind the alias",
    409: "The index does not match the service's model", 413: "Request body over the limit",
    422: "A field the service refuses (named in `field`)", 500: "Internal error (the log has it under the request id)",
    502: "OpenSearch refused the request (the log has its reasons under the request id)",
    503: "OpenSearch unreachable, or the model not available",
}


class FieldError(Exception):
    """A request field the models accept but the service does not."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def error_responses(*codes: int, auth: bool) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each status it can answer besides 200, all with the ErrorBody model."""
    wanted = sorted(set(codes) | {413, 500} | ({401} if auth else set()))
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in wanted}


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def error(request: Request, status: int, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=message, field=field, request_id=request_id(request))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def public_message(exc: MMRagError, status: int, alias: str) -> str:
    """What a client may read of a library error: no node address, no raw causes (those go to the log)."""
    text = str(exc)
    if status == 503 and isinstance(exc, ConnectionFailedError):
        reason = next((words for words in REACH_REASONS if words in text), "")
        return "OpenSearch is unreachable" + (f" ({reason})" if reason else "") + "; retry when it is back"
    if status == 503:
        return "the index's model is not available to this service"
    if status == 404:
        return f"no index behind the alias {alias!r}; index papers first"
    if status == 502:
        return "OpenSearch refused the request; the service log has its reasons under the request id"
    if status >= 500:
        return "internal error; the service log has the details under the request id"
    return redact(text)


def redact(text: str) -> str:
    """`text` without URLs (the node's address)."""
    return _URL.sub("the node", text)


def add_error_handlers(app: FastAPI, alias: str) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error(request, 400, f"malformed JSON in the request body: "
                                       f"{first.get('ctx', {}).get('error', first['msg'])}")
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or str((first.get("loc") or ("body",))[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return error(request, 422, f"{field}: {first['msg']}{more}", field)

    @app.exception_handler(FieldError)
    async def refused(request: Request, exc: FieldError) -> JSONResponse:
        return error(request, 422, f"{exc.field}: {exc}", exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(request, exc.status_code, str(exc.detail), headers=exc.headers)  # 405 keeps its Allow header

    @app.exception_handler(MMRagError)
    async def library_error(request: Request, exc: MMRagError) -> JSONResponse:
        status = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
        if status >= 500:
            logger.error("request %s: %s %s: %s", request_id(request), request.method, request.url.path, exc)
        return error(request, status, public_message(exc, status, alias))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s: %s %s failed", request_id(request), request.method, request.url.path)
        return error(request, 500, "internal error; the service log has the details under the request id")
