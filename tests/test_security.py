"""Authentication and TLS: basic auth, AWS SigV4, certificate checks; credentials never shown.

The real checks run through small loopback proxies in front of the session node: a TLS endpoint
with basic auth (certificates made with the `openssl` CLI), and a plain one that records what the
client sends so that SigV4 signatures can be verified the way AWS does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from opensearchpy.connection import Urllib3HttpConnection

from multi_modal_rag.cli import run as cli_run
from multi_modal_rag.connection import ConnectionSettings, make_client, redact_url
from multi_modal_rag.errors import AuthSetupError
from multi_modal_rag.documents import Paper
from multi_modal_rag.errors import ConnectionFailedError, MMRagError
from multi_modal_rag import OpenSearchManager

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "alice", "S3cr3t-Pa55w0rd!"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()  # what travels in the Authorization header
AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SECRETS = (PASSWORD, BASIC, AWS_SECRET)
CONFLICT = "OPENSEARCH_VERIFY_CERTS=false and OPENSEARCH_CA_CERTS are both set"  # make_client refuses the pair


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a credential leaked into: {text[:500]}"


# ---- a loopback proxy: optional TLS, optional basic auth, records what it receives ---------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # as sent (compressed when the client compresses)


UNAUTHORIZED = json.dumps({
    "error": {"root_cause": [{"type": "security_exception", "reason": "Unauthorized"}],
              "type": "security_exception", "reason": "Unauthorized"},
    "status": 401,
}).encode()
_HOP = {"host", "connection", "content-length", "transfer-encoding", "authorization"}


class GatewayProxy:
    """127.0.0.1:free port in front of `upstream`, like a secured cluster: TLS when given a certificate,
    401 unless the request carries `user:password` when given those."""

    def __init__(self, upstream: str, cert: tuple[Path, Path] | None = None, credentials: tuple[str, str] | None = None):
        import http.client

        target = urlsplit(upstream)
        self.received: list[Received] = []
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode() if credentials else None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy.received.append(Received(self.command, self.path, headers, body))
                if expected is not None and headers.get("authorization") != expected:
                    status, reply = 401, UNAUTHORIZED
                    reply_headers = {"content-type": "application/json; charset=UTF-8",
                                     "www-authenticate": 'Basic realm="OpenSearch Security"'}
                else:
                    upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                    try:
                        upstream_conn.request(self.command, self.path, body=body or None,
                                              headers={k: v for k, v in headers.items() if k not in _HOP})
                        response = upstream_conn.getresponse()
                        status, reply = response.status, response.read()
                        reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP}
                    finally:
                        upstream_conn.close()
                self.send_response(status)
                for key, value in reply_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # failed handshakes are part of the tests
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            # the handshake happens in the handler thread, so a client that refuses it cannot block the server
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "GatewayProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- settings and redaction ----------------------------------------------------------------------------------


def test_settings_repr_and_urls_hide_the_password():
    settings = ConnectionSettings(url=f"https://{USER}:{PASSWORD}@search.example.org:9200/", user=USER, password=PASSWORD)
    _assert_no_secret(repr(settings), str(settings), settings.safe_url, f"{settings!r} {[settings]}")
    assert settings.safe_url == "https://search.example.org:9200/" and "search.example.org" in repr(settings)
    assert redact_url("http://localhost:9200") == "http://localhost:9200"
    assert redact_url(f"http://{USER}:p@ss@word@host:1/x?y=1") == "http://host:1/x?y=1"  # an @ inside the password


def test_from_env_reads_every_setting(monkeypatch):
    monkeypatch.setenv("OPENSEARCH_URL", "https://search.example.org:443")
    monkeypatch.setenv("OPENSEARCH_USER", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "False")
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", "/tmp/ca.pem")
    monkeypatch.setenv("OPENSEARCH_AWS_REGION", " eu-west-1 ")
    monkeypatch.setenv("OPENSEARCH_AWS_SERVICE", "AOSS")
    settings = ConnectionSettings.from_env()
    assert (settings.url, settings.user, settings.password) == ("https://search.example.org:443", USER, PASSWORD)
    assert (settings.verify_certs, settings.ca_certs) == (False, "/tmp/ca.pem")  # read as given; make_client refuses the pair
    assert (settings.aws_region, settings.aws_service) == ("eu-west-1", "aoss")
    assert ConnectionSettings.from_env("http://other:9200").url == "http://other:9200"  # --url wins
    for name in ("OPENSEARCH_VERIFY_CERTS", "OPENSEARCH_AWS_REGION", "OPENSEARCH_AWS_SERVICE"):
        monkeypatch.delenv(name)
    settings = ConnectionSettings.from_env()
    assert (settings.verify_certs, settings.aws_region, settings.aws_service) == (True, None, "es")


# ---- how the client is built for TLS ------------------------------------------------------------------------


def _connection(settings: ConnectionSettings) -> Urllib3HttpConnection:
    (connection,) = make_client(settings).transport.connection_pool.connections
    return connection


def test_https_verifies_certificates_by_default_with_the_system_bundle():
    connection = _connection(ConnectionSettings(url="https://search.example.org:9200"))
    assert connection.use_ssl and connection.pool.scheme == "https"
    assert connection.pool.cert_reqs == "CERT_REQUIRED"
    assert connection.pool.ca_certs == Urllib3HttpConnection.default_ca_certs() and os.path.isfile(connection.pool.ca_certs)


def test_a_ca_bundle_is_used_for_verification(tmp_path):
    bundle = tmp_path / "ca.pem"
    connection = _connection(ConnectionSettings(url="https://search.example.org:9200", ca_certs=str(bundle)))
    assert (connection.pool.cert_reqs, connection.pool.ca_certs) == ("CERT_REQUIRED", str(bundle))


def test_verify_certs_false_turns_verification_off(monkeypatch):
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "false")
    monkeypatch.delenv("OPENSEARCH_CA_CERTS", raising=False)
    connection = _connection(ConnectionSettings.from_env("https://search.example.org:9200"))
    assert connection.pool.cert_reqs == "CERT_NONE"
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", "/tmp/ca.pem")  # not silently ignored
    with pytest.raises(AuthSetupError, match=CONFLICT):
        make_client(ConnectionSettings.from_env("https://search.example.org:9200"))


def test_basic_auth_travels_as_a_header_only():
    connection = _connection(ConnectionSettings(url="http://localhost:9200", user=USER, password=PASSWORD))
    assert connection.headers["authorization"] == f"Basic {BASIC}"
    assert PASSWORD not in connection.host
    from_url = _connection(ConnectionSettings(url=f"http://{USER}:{PASSWORD}@localhost:9200"))
    assert from_url.headers["authorization"] == f"Basic {BASIC}" and PASSWORD not in from_url.host


# ---- credentials never shown: errors, logs, CLI output -----------------------------------------------------------


def test_a_dead_node_error_does_not_show_credentials(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{_free_port()}"
    for settings in (ConnectionSettings(url=url, timeout=2),
                     ConnectionSettings(url=redact_url(url), user=USER, password=PASSWORD, timeout=2)):
        with pytest.raises(ConnectionFailedError, match="Cannot reach OpenSearch at http://127.0.0.1:") as info:
            OpenSearchManager(alias="papers", settings=settings).ping()
        _assert_no_secret(str(info.value), repr(info.value), "".join(traceback.format_exception(info.value)))
    assert "127.0.0.1" in caplog.text  # the client did log its failed attempts
    _assert_no_secret(caplog.text)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENSEARCH_")} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "multi_modal_rag", *args], cwd=REPO, env=environment | (env or {}),
                          capture_output=True, text=True, timeout=180)


def test_cli_status_against_a_dead_node_does_not_show_credentials():
    port = _free_port()
    result = _run_cli("-v", "status", "--index", "papers", "--url", f"http://{USER}:{PASSWORD}@127.0.0.1:{port}", "--json")
    assert result.returncode == 1, result.stderr
    assert f"Cannot reach OpenSearch at http://127.0.0.1:{port}" in result.stderr
    assert "127.0.0.1" in result.stderr.split("error:")[0]  # -v: the client's own log of each failed attempt
    _assert_no_secret(result.stdout, result.stderr)
    result = _run_cli("status", "--index", "papers", "--json", env={
        "OPENSEARCH_URL": f"http://127.0.0.1:{port}", "OPENSEARCH_USER": USER, "OPENSEARCH_PASSWORD": PASSWORD})
    assert result.returncode == 1 and "Cannot reach" in result.stderr and "Traceback" not in result.stderr
    _assert_no_secret(result.stdout, result.stderr)


# ---- real TLS and basic auth ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    files = {name: folder / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr", "ext.cnf")}
    files["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mmrag test CA",
            "-keyout", files["ca.key"], "-out", files["ca.pem"],
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", files["server.key"], "-out", files["server.csr"])
    openssl("x509", "-req", "-in", files["server.csr"], "-CA", files["ca.pem"], "-CAkey", files["ca.key"], "-CAcreateserial",
            "-days", "2", "-out", files["server.pem"], "-extfile", files["ext.cnf"])
    return files


@pytest.fixture(scope="module")
def secured(settings, certificates) -> Iterator[GatewayProxy]:
    """The session node behind TLS (our CA) and basic auth (alice / the password)."""
    with GatewayProxy(settings.url, cert=(certificates["server.pem"], certificates["server.key"]), credentials=(USER, PASSWORD)) as proxy:
        yield proxy


def test_an_unknown_certificate_authority_is_refused(secured, caplog):
    caplog.set_level(logging.DEBUG)
    manager = OpenSearchManager(alias="papers", settings=ConnectionSettings(url=secured.url, user=USER, password=PASSWORD, timeout=5))
    before = len(secured.received)
    with pytest.raises(ConnectionFailedError, match="CERTIFICATE_VERIFY_FAILED") as info:
        manager.ping()
    assert len(secured.received) == before  # no request (and no credentials) crossed an unverified connection
    _assert_no_secret(str(info.value), caplog.text)


def test_tls_with_the_ca_bundle_and_basic_auth_indexes_and_searches(secured, certificates, index_name, client, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENSEARCH_URL", secured.url)
    monkeypatch.setenv("OPENSEARCH_USER", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(certificates["ca.pem"]))
    manager = OpenSearchManager(alias=index_name, model="minilm")  # settings from the environment
    manager.ping()
    papers = [Paper(id=f"tls-{i}", title=title, abstract=f"An abstract about {title.lower()}.")
              for i, title in enumerate(["Transport layer security", "Coral reef bleaching", "Protein folding"])]
    assert manager.index_all(papers).created == 3
    hits = manager.search("coral bleaching", mode="hybrid", size=1)
    assert hits[0].id == "tls-1"
    assert client.count(index=index_name)["count"] == 3  # really in the node behind the proxy
    assert all(r.headers.get("authorization") == f"Basic {BASIC}" for r in secured.received[-5:])
    _assert_no_secret(caplog.text)


def test_verify_certs_false_connects_without_the_ca(secured, certificates, monkeypatch):
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "false")
    monkeypatch.setenv("OPENSEARCH_USER", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)
    monkeypatch.delenv("OPENSEARCH_CA_CERTS", raising=False)
    OpenSearchManager(alias="papers", settings=ConnectionSettings.from_env(secured.url)).ping()
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(certificates["ca.pem"]))
    before = len(secured.received)
    with pytest.raises(AuthSetupError, match=CONFLICT) as info:
        OpenSearchManager(alias="papers", settings=ConnectionSettings.from_env(secured.url)).ping()
    assert len(secured.received) == before  # refused before any request
    _assert_no_secret(str(info.value))


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_wrong_or_missing_credentials_are_one_clear_error(secured, certificates, password, caplog):
    caplog.set_level(logging.DEBUG)
    settings = ConnectionSettings(url=secured.url, user=USER if password else None, password=password,
                                  ca_certs=str(certificates["ca.pem"]))
    with pytest.raises(ConnectionFailedError, match=rf"OpenSearch at {secured.url} refused the credentials \(401\)") as info:
        OpenSearchManager(alias="papers", settings=settings).ping()
    assert "wrong-password" not in str(info.value) + caplog.text


def test_cli_over_tls_with_credentials_from_the_environment(secured, certificates, index_name, settings):
    OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(
        [Paper(id="one", title="A single paper", abstract="Short.")])
    env = {"OPENSEARCH_URL": secured.url, "OPENSEARCH_USER": USER, "OPENSEARCH_PASSWORD": PASSWORD,
           "OPENSEARCH_CA_CERTS": str(certificates["ca.pem"])}
    result = _run_cli("-v", "status", "--index", index_name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["documents"] == 1
    _assert_no_secret(result.stdout, result.stderr)
    result = _run_cli("status", "--index", index_name, "--json", env=env | {"OPENSEARCH_PASSWORD": "not-it"})
    assert result.returncode == 1 and "refused the credentials (401)" in result.stderr and "Traceback" not in result.stderr
    assert "not-it" not in result.stdout + result.stderr
    result = _run_cli("status", "--index", index_name, "--json", env={**env, "OPENSEARCH_CA_CERTS": ""})
    assert result.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    _assert_no_secret(result.stdout, result.stderr)


# ---- AWS SigV4 --------------------------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path) -> None:
    """Static credentials in the environment, and nothing else boto3 could find (no files, no instance metadata)."""
    pytest.importorskip("boto3")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _check_signature(request: Received, url: str, region: str, service: str) -> None:
    """Recompute the SigV4 signature of a received request, as the AWS endpoint would."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    algorithm, _, fields = request.headers["authorization"].partition(" ")
    parts = dict(part.strip().split("=", 1) for part in fields.split(","))
    assert algorithm == "AWS4-HMAC-SHA256"
    date = request.headers["x-amz-date"]
    assert parts["Credential"] == f"{AWS_KEY}/{date[:8]}/{region}/{service}/aws4_request"
    signed = parts["SignedHeaders"].split(";")
    assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed)
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(request.body).hexdigest()  # the bytes sent
    aws_request = AWSRequest(method=request.method, url=url + request.path, data=request.body,
                             headers={name: request.headers[name] for name in signed})
    aws_request.context["timestamp"] = date
    signer = SigV4Auth(Credentials(AWS_KEY, AWS_SECRET), service, region)
    expected = signer.signature(signer.string_to_sign(aws_request, signer.canonical_request(aws_request)), aws_request)
    assert hmac.compare_digest(parts["Signature"], expected), f"bad signature for {request.method} {request.path}"


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_sigv4_signs_every_request_with_credentials_from_the_default_chain(aws_env, settings, index_name, client, service, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    with GatewayProxy(settings.url) as proxy:
        monkeypatch.setenv("OPENSEARCH_AWS_REGION", "eu-west-1")
        monkeypatch.setenv("OPENSEARCH_AWS_SERVICE", service)
        manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings.from_env(proxy.url))
        assert manager.index_all([Paper(id="signed", title="Signed requests", abstract="SigV4 for every call.")]).created == 1
        assert manager.search("signed requests", mode="bm25", size=1)[0].id == "signed"
    assert client.count(index=index_name)["count"] == 1
    methods = {r.method for r in proxy.received}
    assert {"GET", "HEAD", "PUT", "POST"} <= methods and any(r.body for r in proxy.received)
    for request in proxy.received:
        _check_signature(request, proxy.url, "eu-west-1", service)
        _assert_no_secret(*request.headers.values())
    _assert_no_secret(caplog.text)


def test_sigv4_without_boto3_names_the_package_to_install(aws_env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    settings = ConnectionSettings(url="https://search-x.eu-west-1.es.amazonaws.com", aws_region="eu-west-1")
    with pytest.raises(AuthSetupError, match=r"needs boto3: `pip install boto3`"):
        make_client(settings)
    monkeypatch.setenv("OPENSEARCH_AWS_REGION", "eu-west-1")
    assert cli_run(["status", "--index", "papers", "--url", "https://search-x.eu-west-1.es.amazonaws.com"]) == 1
    assert "pip install boto3" in capsys.readouterr().err


def test_sigv4_without_credentials_is_one_clear_error(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthSetupError, match="No AWS credentials found"):
        make_client(ConnectionSettings(url="https://search-x.eu-west-1.es.amazonaws.com", aws_region="eu-west-1"))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(AuthSetupError, match="no-such-profile"):
        make_client(ConnectionSettings(url="https://search-x.eu-west-1.es.amazonaws.com", aws_region="eu-west-1"))


@pytest.mark.parametrize("settings_kwargs, message", [
    ({"aws_service": "s3"}, "not one of es, aoss"),
    ({"user": USER, "password": PASSWORD}, "use one of them"),
    ({"url": f"https://{USER}:{PASSWORD}@search-x.eu-west-1.es.amazonaws.com"}, "use one of them"),
])
def test_sigv4_refuses_conflicting_or_unknown_settings(aws_env, settings_kwargs, message):
    kwargs = {"url": "https://search-x.eu-west-1.es.amazonaws.com", "aws_region": "eu-west-1", **settings_kwargs}
    with pytest.raises(AuthSetupError, match=message) as info:
        make_client(ConnectionSettings(**kwargs))
    assert isinstance(info.value, MMRagError)
    _assert_no_secret(str(info.value))


def test_sigv4_client_verifies_certificates(aws_env):
    connection = _connection(ConnectionSettings(url="https://search-x.eu-west-1.es.amazonaws.com", aws_region="eu-west-1"))
    assert connection.pool.cert_reqs == "CERT_REQUIRED" and callable(connection.http_auth)
    assert "authorization" not in connection.headers  # signed per request, not a fixed header
