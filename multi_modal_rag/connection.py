"""Connection settings and client creation (from arguments or OPENSEARCH_* variables).

Authentication: none, basic auth (OPENSEARCH_USER / OPENSEARCH_PASSWORD, or `user:password@` in the URL
with `/`, `?` and `#` percent-encoded), or AWS SigV4 for Amazon OpenSearch Service (OPENSEARCH_AWS_REGION,
with OPENSEARCH_AWS_SERVICE `es` for managed domains or `aoss` for Serverless) with credentials from boto3's
default chain: environment, shared config/credentials files, SSO, container or instance role. boto3 is
imported only then. Basic auth over plain http to a host other than loopback logs a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opensearchpy import OpenSearch

from .errors import AuthSetupError

DEFAULT_URL = "http://localhost:9200"
AWS_SERVICES = ("es", "aoss")  # Amazon OpenSearch Service domains, OpenSearch Serverless collections
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where OpenSearch is and how to authenticate; `repr` never shows the password (field or URL)."""

    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_certs: bool = True
    ca_certs: str | None = None
    timeout: float = 60.0
    aws_region: str | None = None  # set: sign every request with AWS SigV4 (Amazon OpenSearch Service)
    aws_service: str = "es"  # "es" for a managed domain, "aoss" for OpenSearch Serverless
    pool_maxsize: int = 10  # HTTP connections kept to the node; a server searching from many threads needs more

    @classmethod
    def from_env(cls, url: str | None = None) -> "ConnectionSettings":
        """Settings from OPENSEARCH_URL, OPENSEARCH_USER, OPENSEARCH_PASSWORD,
        OPENSEARCH_VERIFY_CERTS (true/false), OPENSEARCH_CA_CERTS, OPENSEARCH_AWS_REGION
        and OPENSEARCH_AWS_SERVICE (es or aoss)."""
        verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").strip().lower()
        return cls(
            url=url or os.environ.get("OPENSEARCH_URL") or DEFAULT_URL,
            user=os.environ.get("OPENSEARCH_USER") or None,
            password=os.environ.get("OPENSEARCH_PASSWORD") or None,
            verify_certs=verify not in {"0", "false", "no", "off"},
            ca_certs=os.environ.get("OPENSEARCH_CA_CERTS") or None,
            aws_region=(os.environ.get("OPENSEARCH_AWS_REGION") or "").strip() or None,
            aws_service=(os.environ.get("OPENSEARCH_AWS_SERVICE") or "").strip().lower() or "es",
        )

    def __repr__(self) -> str:  # the URL may hold `user:password@`
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in ("user", "verify_certs", "ca_certs", "timeout", "aws_region", "aws_service")
        )
        return f"ConnectionSettings(url={self.safe_url!r}, {shown})"

    @property
    def safe_url(self) -> str:
        """The URL with any credentials in it removed, for messages and logs."""
        return redact_url(self.url)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(`scheme://` or "", the `user:password` part or None, host and the rest).

    The userinfo runs to the last `@`: a host never holds one, while a password may hold `@`, `/`, `?`
    or `#` (urlsplit ends the netloc at the first of the last three). An `@` in a path or query with
    no credentials is then taken for one too: over-redaction, never a leak.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 2 if url.startswith("//") else 0
    userinfo, at, rest = url[start:].rpartition("@")
    return url[:start], (userinfo if at else None), rest


def redact_url(url: str) -> str:
    """Drop `user:password@` from a URL, whatever characters the password holds."""
    prefix, userinfo, rest = _split_userinfo(url)
    return url if userinfo is None else prefix + rest


def is_loopback(url: str) -> bool:
    """Whether the URL's host is localhost, 127.0.0.0/8 or ::1 (by name or address; nothing is resolved)."""
    authority = re.split(r"[/?#]", _split_userinfo(url)[2], maxsplit=1)[0]
    try:
        host = urlsplit("//" + authority).hostname or ""
    except ValueError:  # e.g. an unclosed '['
        return False
    if host.rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _check_url_credentials(url: str) -> None:
    """Refuse `user:password@` holding an unencoded `/`, `?` or `#`: opensearch-py would take part of it for the host."""
    userinfo = _split_userinfo(url)[1]
    if userinfo is not None and any(char in userinfo for char in "/?#"):
        raise AuthSetupError(
            f"The user:password@ part of the URL {redact_url(url)} holds an unencoded '/', '?' or '#', so the URL "
            "cannot be parsed; percent-encode them (%2F, %3F, %23; an '@' in a path or query as %40), "
            "or drop the credentials from the URL and set OPENSEARCH_USER and OPENSEARCH_PASSWORD."
        )


def _warn_if_unencrypted(settings: ConnectionSettings) -> None:
    """Warn that basic auth over plain http sends the password in clear text.

    Loopback hosts are exempt: those bytes never leave the machine (a local node, or a tunnel such as
    `ssh -L` or `kubectl port-forward` that encrypts the hop itself), so nobody on the network can read them.
    """
    if settings.user is None and _split_userinfo(settings.url)[1] is None:
        return
    if settings.url.lower().startswith("https") or is_loopback(settings.url):
        return
    logger.warning(
        "Basic auth credentials for %s travel unencrypted over plain http; use an https:// URL to protect them.",
        settings.safe_url,
    )


def make_client(settings: ConnectionSettings) -> OpenSearch:
    """An OpenSearch client; nothing is sent until the first request.

    Raises AuthSetupError for settings that cannot work as meant: an unencoded `/`, `?` or `#` in a
    URL password, certificate verification off together with a CA bundle, or a failed SigV4 setup.
    """
    _check_url_credentials(settings.url)
    if not settings.verify_certs and settings.ca_certs:  # a CA bundle silently ignored would be a security surprise
        raise AuthSetupError(
            f"OPENSEARCH_VERIFY_CERTS=false and OPENSEARCH_CA_CERTS are both set (CA bundle {settings.ca_certs}), "
            "but with verification off the CA would be ignored; unset OPENSEARCH_VERIFY_CERTS to verify the "
            "node against that CA, or unset OPENSEARCH_CA_CERTS to connect without verification."
        )
    kwargs: dict = {
        "hosts": [settings.url],
        "timeout": settings.timeout,
        "max_retries": 3,
        "retry_on_timeout": True,
        # gzip pays off across a network (bulk bodies shrink ~4x); to a node on this machine it only costs CPU
        "http_compress": not is_loopback(settings.url),
        "pool_maxsize": settings.pool_maxsize,  # urllib3 keeps 1 connection otherwise: threads reconnect per request
    }
    if settings.aws_region:
        kwargs["http_auth"] = aws_sigv4_auth(settings)
    elif settings.user is not None:
        kwargs["http_auth"] = (settings.user, settings.password or "")
    if settings.url.lower().startswith("https"):
        kwargs["use_ssl"] = True
        kwargs["verify_certs"] = settings.verify_certs
        if settings.ca_certs:
            kwargs["ca_certs"] = settings.ca_certs
        if not settings.verify_certs:
            kwargs["ssl_show_warn"] = False
    client = OpenSearch(**kwargs)
    _warn_if_unencrypted(settings)
    return client


def aws_sigv4_auth(settings: ConnectionSettings) -> Any:
    """A SigV4 request signer for the default (urllib3) connection, credentials from boto3's default chain.

    opensearch-py's `AWSV4SignerAuth` is its `requests` variant (it needs `connection_class=RequestsHttpConnection`);
    `Urllib3AWSV4SignerAuth` is the same signer for the urllib3 connection this client uses. Credentials are
    frozen per request, so role credentials that expire are refreshed by boto3.
    """
    service = settings.aws_service.strip().lower()
    if service not in AWS_SERVICES:
        raise AuthSetupError(
            f"AWS service {settings.aws_service!r} is not one of {', '.join(AWS_SERVICES)} "
            "(es: an Amazon OpenSearch Service domain, aoss: OpenSearch Serverless); set OPENSEARCH_AWS_SERVICE."
        )
    if settings.user is not None or _split_userinfo(settings.url)[1] is not None:
        raise AuthSetupError(
            "Both basic auth (OPENSEARCH_USER or user@ in the URL) and AWS SigV4 (OPENSEARCH_AWS_REGION) are set; "
            "use one of them."
        )
    try:
        import boto3
    except ImportError:
        raise AuthSetupError(
            f"AWS SigV4 authentication (region {settings.aws_region}) needs boto3: `pip install boto3`."
        ) from None
    from botocore.exceptions import BotoCoreError
    from opensearchpy import Urllib3AWSV4SignerAuth

    try:
        credentials = boto3.Session().get_credentials()
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        raise AuthSetupError(f"AWS credentials for SigV4 could not be loaded: {exc}") from None
    if credentials is None:
        raise AuthSetupError(
            "No AWS credentials found for SigV4 (boto3 looked at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials and ~/.aws/config, SSO, and container or instance roles)."
        )
    return Urllib3AWSV4SignerAuth(credentials, settings.aws_region, service)
