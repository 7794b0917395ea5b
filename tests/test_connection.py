"""Connection settings without a node: URL redaction, credentials in URLs, plain-http and TLS setting checks."""

from __future__ import annotations

import base64
import logging

import pytest
from opensearchpy.connection import Urllib3HttpConnection

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings, make_client, redact_url
from multi_modal_rag.errors import AuthSetupError

USER = "alice"
HOST = "search.example.org:9200"
# passwords that urlsplit cuts short: the first '/', '?' or '#' ends its netloc, so the '@' lands in path/query/fragment
UNENCODED = ["Zq9/Secret", "Zq9?Secret", "Zq9#Secret", "Zq9/?#@Secret", "Zq9#Secret/x?y@z", "Zq9:Secret/"]


def _connection(settings: ConnectionSettings) -> Urllib3HttpConnection:
    (connection,) = make_client(settings).transport.connection_pool.connections
    return connection


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


# ---- redaction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [*UNENCODED, "p@ss", "p@ss@word", "p%2Fss"])
@pytest.mark.parametrize("scheme", ["http", "https", "HTTPS"])
def test_redaction_drops_any_password(password, scheme):
    url = f"{scheme}://{USER}:{password}@{HOST}/prefix"
    settings = ConnectionSettings(url=url, user=USER)
    assert redact_url(url) == settings.safe_url == f"{scheme}://{HOST}/prefix"
    for shown in (settings.safe_url, repr(settings), str(settings)):
        assert password not in shown and "Secret" not in shown and HOST in shown


@pytest.mark.parametrize("url", [
    "http://localhost:9200", "https://search.example.org:443/a/b/?x=1#top", "http://[::1]:9200/", "localhost:9200", "",
])
def test_redaction_leaves_urls_without_credentials_unchanged(url):
    assert redact_url(url) == url


@pytest.mark.parametrize("url, redacted", [
    (f"{USER}:Zq9/Secret@{HOST}", HOST),  # no scheme: opensearch-py reads it as http://
    (f"{USER}@{HOST}/x", f"{HOST}/x"),
    (f"http://{USER}:Zq9/Secret@[::1]:9200/x?y=1", "http://[::1]:9200/x?y=1"),
    (f"http://{USER}:@{HOST}", f"http://{HOST}"),
])
def test_redaction_of_other_userinfo_shapes(url, redacted):
    assert redact_url(url) == redacted


# ---- credentials inside the URL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("in_url, password", [
    ("p@ss", "p@ss"),  # the host starts after the last '@', so an '@' needs no encoding
    ("p%2Fss", "p/ss"), ("p%3Fss", "p?ss"), ("p%23ss", "p#ss"), ("a%2F%3F%23%40b:c", "a/?#@b:c"),
])
def test_credentials_in_the_url_become_a_basic_auth_header(in_url, password):
    connection = _connection(ConnectionSettings(url=f"https://{USER}:{in_url}@{HOST}/prefix"))
    assert connection.headers["authorization"] == _basic(password)
    assert (connection.host, connection.url_prefix) == (f"https://{HOST}", "/prefix")


@pytest.mark.parametrize("password", UNENCODED)
def test_an_unencoded_slash_question_mark_or_hash_in_the_url_password_is_refused(password, caplog):
    settings = ConnectionSettings(url=f"http://{USER}:{password}@{HOST}")
    with pytest.raises(AuthSetupError, match="percent-encode") as info:
        make_client(settings)
    message = str(info.value)
    assert "OPENSEARCH_USER" in message and "OPENSEARCH_PASSWORD" in message and HOST in message
    assert "Zq9" not in message and "Secret" not in message  # not even the part before the '/'
    with pytest.raises(AuthSetupError) as info:  # the manager creates its client on first use
        OpenSearchManager(alias="papers", settings=settings).ping()
    assert "Zq9" not in str(info.value) + caplog.text and "Secret" not in str(info.value) + caplog.text


def test_an_unencoded_password_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("OPENSEARCH_URL", f"https://{USER}:Zq9/Secret@{HOST}")
    with pytest.raises(AuthSetupError, match="percent-encode") as info:
        make_client(ConnectionSettings.from_env())
    assert "Zq9" not in str(info.value) and "Secret" not in str(info.value)


def test_the_same_password_works_from_the_variables():
    connection = _connection(ConnectionSettings(url=f"https://{HOST}", user=USER, password="Zq9/?#@Secret"))
    assert connection.headers["authorization"] == _basic("Zq9/?#@Secret")


# ---- basic auth over plain http -------------------------------------------------------------------------------------


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "multi_modal_rag.connection" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("settings", [
    ConnectionSettings(url=f"http://{HOST}/prefix", user=USER, password="Zq9-Secret"),
    ConnectionSettings(url=f"http://{USER}:Zq9-Secret@{HOST}/prefix"),
    ConnectionSettings(url=f"HTTP://{USER}:Zq9-Secret@{HOST}/prefix"),
    ConnectionSettings(url=f"{USER}:Zq9-Secret@{HOST}/prefix"),  # no scheme: http
], ids=["variables", "url", "upper-case", "no-scheme"])
def test_basic_auth_over_plain_http_warns_once_per_client(settings, caplog):
    caplog.set_level(logging.WARNING)
    make_client(settings)
    (record,) = _warnings(caplog)
    assert settings.safe_url in record.getMessage() and "unencrypted" in record.getMessage()
    assert "Zq9" not in caplog.text and "Secret" not in caplog.text
    make_client(settings)
    assert len(_warnings(caplog)) == 2


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "[::1]", "[::ffff:127.0.0.1]"])
def test_basic_auth_over_loopback_http_does_not_warn(host, caplog):
    caplog.set_level(logging.WARNING)
    make_client(ConnectionSettings(url=f"http://{host}:9200", user=USER, password="pw"))
    make_client(ConnectionSettings(url=f"http://{USER}:pw@{host}:9200"))
    assert _warnings(caplog) == []


@pytest.mark.parametrize("host", ["128.0.0.1", "10.0.0.5", "[::2]", "localhost.example.org", "mylocalhost"])
def test_basic_auth_over_other_http_hosts_warns(host, caplog):
    caplog.set_level(logging.WARNING)
    make_client(ConnectionSettings(url=f"http://{host}:9200", user=USER, password="pw"))
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("settings", [
    ConnectionSettings(url=f"https://{HOST}", user=USER, password="pw"),
    ConnectionSettings(url=f"https://{USER}:pw@{HOST}"),
    ConnectionSettings(url=f"http://{HOST}"),
], ids=["https-variables", "https-url", "http-no-credentials"])
def test_https_or_no_credentials_does_not_warn(settings, caplog):
    caplog.set_level(logging.WARNING)
    make_client(settings)
    assert _warnings(caplog) == []


# ---- OPENSEARCH_VERIFY_CERTS=false with a CA bundle -----------------------------------------------------------------


@pytest.mark.parametrize("url", [f"https://{HOST}", f"http://{HOST}"])
def test_verification_off_and_a_ca_bundle_are_refused_together(url):
    settings = ConnectionSettings(url=url, verify_certs=False, ca_certs="/tmp/ca.pem")
    with pytest.raises(AuthSetupError, match="OPENSEARCH_VERIFY_CERTS=false and OPENSEARCH_CA_CERTS are both set"):
        make_client(settings)


def test_verification_off_and_a_ca_bundle_from_the_environment_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "false")
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(tmp_path / "ca.pem"))
    with pytest.raises(AuthSetupError, match="both set") as info:
        make_client(ConnectionSettings.from_env(f"https://{HOST}"))
    assert str(tmp_path / "ca.pem") in str(info.value)
    monkeypatch.delenv("OPENSEARCH_CA_CERTS")
    assert _connection(ConnectionSettings.from_env(f"https://{HOST}")).pool.cert_reqs == "CERT_NONE"
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(tmp_path / "ca.pem"))
    monkeypatch.delenv("OPENSEARCH_VERIFY_CERTS")
    connection = _connection(ConnectionSettings.from_env(f"https://{HOST}"))
    assert (connection.pool.cert_reqs, connection.pool.ca_certs) == ("CERT_REQUIRED", str(tmp_path / "ca.pem"))


# ---- several nodes ------------------------------------------------------------------------------------------------


def test_a_comma_separated_url_is_a_list_of_nodes_each_redacted(monkeypatch):
    monkeypatch.setenv("OPENSEARCH_URL", f" http://{USER}:s3cret@node-a:9200 , http://node-b:9200,")
    settings = ConnectionSettings.from_env()
    assert settings.hosts == [f"http://{USER}:s3cret@node-a:9200", "http://node-b:9200"]
    assert settings.safe_url == "http://node-a:9200,http://node-b:9200" and "s3cret" not in repr(settings)
    hosts = sorted(c.host for c in make_client(settings).transport.connection_pool.connections)
    assert hosts == ["http://node-a:9200", "http://node-b:9200"]
    assert not settings.loopback and ConnectionSettings(url="http://localhost:9200,http://127.0.0.1:9201").loopback


def test_mixed_http_and_https_nodes_are_refused():
    with pytest.raises(AuthSetupError, match="mixes http:// and https://"):
        make_client(ConnectionSettings(url="https://node-a:9200,http://node-b:9200"))


def test_sniffing_is_off_unless_asked(monkeypatch):
    assert ConnectionSettings.from_env().sniff is False
    monkeypatch.setenv("OPENSEARCH_SNIFF", "true")
    assert ConnectionSettings.from_env().sniff is True
