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

import orjson
from opensearchpy import OpenSearch
from opensearchpy.serializer import JSONSerializer

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
    pool_maxsize: int = 10  # HTTP connections kept to each node; a server searching from many threads needs more
    sniff: bool = False  # ask the cluster for its other nodes at start and after a connection fails

    @classmethod
    def from_env(cls, url: str | None = None) -> "ConnectionSettings":
        """Settings from OPENSEARCH_URL (one URL, or several separated by commas: the nodes of one cluster),
        OPENSEARCH_USER, OPENSEARCH_PASSWORD, OPENSEARCH_VERIFY_CERTS (true/false), OPENSEARCH_CA_CERTS,
        OPENSEARCH_SNIFF (true/false), OPENSEARCH_AWS_REGION and OPENSEARCH_AWS_SERVICE (es or aoss)."""
        verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").strip().lower()
        return cls(
            url=url or os.environ.get("OPENSEARCH_URL") or DEFAULT_URL,
            user=os.environ.get("OPENSEARCH_USER") or None,
            password=os.environ.get("OPENSEARCH_PASSWORD") or None,
            verify_certs=verify not in {"0", "false", "no", "off"},
            ca_certs=os.environ.get("OPENSEARCH_CA_CERTS") or None,
            sniff=os.environ.get("OPENSEARCH_SNIFF", "").strip().lower() in {"1", "true", "yes", "on"},
            aws_region=(os.environ.get("OPENSEARCH_AWS_REGION") or "").strip() or None,
            aws_service=(os.environ.get("OPENSEARCH_AWS_SERVICE") or "").strip().lower() or "es",
        )

    def __repr__(self) -> str:  # the URL may hold `user:password@`
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in ("user", "verify_certs", "ca_certs", "timeout", "sniff", "aws_region",
                                                           "aws_service")
        )
        return f"ConnectionSettings(url={self.safe_url!r}, {shown})"

    @property
    def hosts(self) -> list[str]:
        """The node URLs: `url` split at commas. The client spreads requests over them and retries on another."""
        return [host.strip() for host in self.url.split(",") if host.strip()] or [DEFAULT_URL]

    @property
    def safe_url(self) -> str:
        """The URL(s) with any credentials in them removed, for messages and logs."""
        return ",".join(redact_url(host) for host in self.hosts)

    @property
    def loopback(self) -> bool:
        """Whether every node is on this machine (see `is_loopback`)."""
        return all(is_loopback(host) for host in self.hosts)

    @property
    def has_url_credentials(self) -> bool:
        return any(_split_userinfo(host)[1] is not None for host in self.hosts)


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
    if settings.user is None and not settings.has_url_credentials:
        return
    if all(host.lower().startswith("https") or is_loopback(host) for host in settings.hosts):
        return
    logger.warning(
        "Basic auth credentials for %s travel unencrypted over plain http; use an https:// URL to protect them.",
        settings.safe_url,
    )


class FastJSONSerializer(JSONSerializer):
    """opensearch-py's JSON serializer with orjson underneath.

    Vectors are most of a bulk body: orjson writes 200 SciFact papers' documents in 8 ms against the standard
    library's 136 ms, and numpy float32 vectors at float32's shortest precision (about half the bytes of
    float64 lists, the same values for a knn_vector). Anything orjson refuses goes to the standard serializer.
    """

    _OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        try:
            return orjson.dumps(data, default=self.default, option=self._OPTIONS).decode("utf-8")
        except TypeError:
            return super().dumps(data)

    def loads(self, s: str) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return super().loads(s)


def make_client(settings: ConnectionSettings) -> OpenSearch:
    """An OpenSearch client; nothing is sent until the first request.

    Raises AuthSetupError for settings that cannot work as meant: an unencoded `/`, `?` or `#` in a
    URL password, certificate verification off together with a CA bundle, or a failed SigV4 setup.
    """
    for host in settings.hosts:
        _check_url_credentials(host)
    https = {host.lower().startswith("https") for host in settings.hosts}
    if len(https) > 1:
        raise AuthSetupError(f"OPENSEARCH_URL mixes http:// and https:// nodes ({settings.safe_url}); use one scheme for all.")
    if not settings.verify_certs and settings.ca_certs:  # a CA bundle silently ignored would be a security surprise
        raise AuthSetupError(
            f"OPENSEARCH_VERIFY_CERTS=false and OPENSEARCH_CA_CERTS are both set (CA bundle {settings.ca_certs}), "
            "but with verification off the CA would be ignored; unset OPENSEARCH_VERIFY_CERTS to verify the "
            "node against that CA, or unset OPENSEARCH_CA_CERTS to connect without verification."
        )
    kwargs: dict = {
        "hosts": settings.hosts,
        "timeout": settings.timeout,
        # a request that fails to connect or times out is retried on the next node (dead ones rest a while)
        "max_retries": max(3, len(settings.hosts)),
        "retry_on_timeout": True,
        # gzip pays off across a network (bulk bodies shrink ~4x); to a node on this machine it only costs CPU
        "http_compress": not settings.loopback,
        "pool_maxsize": settings.pool_maxsize,  # urllib3 keeps 1 connection otherwise: threads reconnect per request
        "serializer": FastJSONSerializer(),
    }
    if settings.aws_region:
        kwargs["http_auth"] = aws_sigv4_auth(settings)
    elif settings.user is not None:
        kwargs["http_auth"] = (settings.user, settings.password or "")
    if settings.sniff:
        # the cluster's own list of nodes replaces OPENSEARCH_URL's; sniffing again when a connection fails
        kwargs.update(sniff_on_start=True, sniff_on_connection_fail=True, sniffer_timeout=60, sniff_timeout=10)
    if https == {True}:
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
    if settings.user is not None or settings.has_url_credentials:
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
