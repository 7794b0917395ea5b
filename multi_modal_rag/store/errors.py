"""The one place where opensearch-py's exceptions become this package's errors.

Every public call of the library that talks to OpenSearch runs inside `translated(url)`, so the
user sees one line that names the node (without credentials) and says what went wrong in words
("connection refused", "timed out"), never the repr of a chain of urllib3 exceptions. The
original exception stays chained (`raise ... from exc`) for anyone debugging.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError as OSConnectionError,
    ConnectionTimeout,
    NotFoundError,
    SSLError,
    TransportError,
)

from ..errors import ConnectionFailedError, IndexNotFoundError, MMRagError, OpenSearchRequestError

NODE_HINT = "Start one with `mmrag node start` (or `docker compose up -d`), or set OPENSEARCH_URL."
# Words for the low-level causes, matched in the text of the exception chain (urllib3 and the OS say them many ways).
_CAUSES = (
    ("connection refused", "connection refused"),
    ("name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("timed out", "timed out"),
    ("connection reset", "connection reset by the node"),
    ("remote end closed connection", "the node closed the connection"),
    ("remotedisconnected", "the node closed the connection"),
    ("broken pipe", "the node closed the connection"),
    ("network is unreachable", "network unreachable"),
)
_SSL_REASON = re.compile(r"\[SSL(?:: [A-Z_]+)?\][^'\")]*")


def describe(exc: BaseException) -> str:
    """A short, one-line reason for a failed request."""
    if isinstance(exc, TransportError) and isinstance(exc.status_code, int):
        error = exc.error if isinstance(exc.error, str) else type(exc).__name__
        info = exc.info if isinstance(exc.info, dict) else {}
        cause = info.get("error", {})
        if isinstance(cause, dict):
            root = (cause.get("root_cause") or [cause])[0]
            reason = f"{root.get('type', error)}: {root.get('reason', '')}".rstrip(": ")
        else:
            reason = str(cause or error)
        return f"{exc.status_code} {reason}"[:300]
    text = _chain_text(exc)
    ssl = _SSL_REASON.search(text)
    if ssl:
        return ssl.group(0).strip()[:300]
    lowered = text.lower()
    if isinstance(exc, ConnectionTimeout):
        return "request timed out"
    for needle, words in _CAUSES:
        if needle in lowered:
            return words
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _chain_text(exc: BaseException) -> str:
    parts, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        info = getattr(current, "info", None)
        if isinstance(info, BaseException):
            parts.append(_chain_text(info))
        current = current.__cause__ or current.__context__
    return " | ".join(parts)


def translate(exc: TransportError, url: str, doing: str = "") -> MMRagError:
    """The package error for an opensearch-py exception; `url` must already be without credentials."""
    what = f" ({doing})" if doing else ""
    if isinstance(exc, (AuthenticationException, AuthorizationException)):
        return ConnectionFailedError(f"OpenSearch at {url} refused the credentials ({exc.status_code}){what}.")
    if isinstance(exc, SSLError):
        return ConnectionFailedError(
            f"TLS verification of {url} failed ({describe(exc)}); set OPENSEARCH_CA_CERTS to the cluster's CA bundle, "
            "or OPENSEARCH_VERIFY_CERTS=false for a test node."
        )
    if isinstance(exc, OSConnectionError):
        reason = describe(exc)
        hint = f" {NODE_HINT}" if reason in ("connection refused", "host name not found") else ""
        return ConnectionFailedError(f"Cannot reach OpenSearch at {url}{what}: {reason}.{hint}")
    if isinstance(exc, NotFoundError):
        return IndexNotFoundError(f"OpenSearch at {url} found no such index{what}: {describe(exc)}")
    return OpenSearchRequestError(f"OpenSearch at {url} refused a request{what}: {describe(exc)}")


@contextmanager
def translated(url: str, doing: str = "") -> Iterator[None]:
    """Run a block of client calls; opensearch-py errors leave it as this package's errors."""
    try:
        yield
    except TransportError as exc:
        raise translate(exc, url, doing) from exc
