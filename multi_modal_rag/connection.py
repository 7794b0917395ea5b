"""Connection settings and client creation (from arguments or OPENSEARCH_* variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from opensearchpy import OpenSearch

DEFAULT_URL = "http://localhost:9200"


@dataclass(frozen=True)
class ConnectionSettings:
    """Where OpenSearch is and how to authenticate; `repr` never shows the password."""

    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_certs: bool = True
    ca_certs: str | None = None
    timeout: float = 60.0

    @classmethod
    def from_env(cls, url: str | None = None) -> "ConnectionSettings":
        """Settings from OPENSEARCH_URL, OPENSEARCH_USER, OPENSEARCH_PASSWORD,
        OPENSEARCH_VERIFY_CERTS (true/false) and OPENSEARCH_CA_CERTS."""
        verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").strip().lower()
        return cls(
            url=url or os.environ.get("OPENSEARCH_URL") or DEFAULT_URL,
            user=os.environ.get("OPENSEARCH_USER") or None,
            password=os.environ.get("OPENSEARCH_PASSWORD") or None,
            verify_certs=verify not in {"0", "false", "no", "off"},
            ca_certs=os.environ.get("OPENSEARCH_CA_CERTS") or None,
        )

    @property
    def safe_url(self) -> str:
        """The URL with any credentials in it removed, for messages and logs."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """Drop `user:password@` from a URL."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def make_client(settings: ConnectionSettings) -> OpenSearch:
    """An OpenSearch client; nothing is sent until the first request."""
    kwargs: dict = {
        "hosts": [settings.url],
        "timeout": settings.timeout,
        "max_retries": 3,
        "retry_on_timeout": True,
        "http_compress": True,
    }
    if settings.user is not None:
        kwargs["http_auth"] = (settings.user, settings.password or "")
    if settings.url.startswith("https"):
        kwargs["use_ssl"] = True
        kwargs["verify_certs"] = settings.verify_certs
        if settings.ca_certs:
            kwargs["ca_certs"] = settings.ca_certs
        if not settings.verify_certs:
            kwargs["ssl_show_warn"] = False
    return OpenSearch(**kwargs)
