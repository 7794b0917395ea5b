"""Error paths of the local node helper: fast, no downloads, no JVM.

The real node (download, assembly, start, stop) is exercised by the session fixture in conftest.py.
"""

from __future__ import annotations

import importlib
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

import multi_modal_rag
from multi_modal_rag import devtools
from multi_modal_rag.devtools import NodeError, node_status, start_node, stop_node


def _fake_jdk(root: Path, version: str = "17.0.15") -> Path:
    """A folder that looks like a Java home (release file, executable bin/java) without being one."""
    (root / "bin").mkdir(parents=True)
    java = root / "bin" / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def java17(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OPENSEARCH_JAVA_HOME pointing at a fake JDK 17, so these tests run without Java installed."""
    home = _fake_jdk(tmp_path / "jdk-17")
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", str(home))
    return home


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A random port with something listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_in_use_is_reported_before_any_download(cache: Path, java17: Path, busy_port: int) -> None:
    with pytest.raises(NodeError, match=f"port {busy_port} is already in use") as info:
        start_node(cache, port=busy_port)
    assert "--port" in str(info.value)
    assert not (cache / "artifacts").exists()


def test_missing_java_names_the_fix(cache: Path, tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(NodeError) as info:
        start_node(cache, port=free_port)
    message = str(info.value)
    assert "OPENSEARCH_JAVA_HOME" in message and "openjdk-17-jdk-headless" in message
    assert not (cache / "artifacts").exists()


def test_java_too_new_for_the_security_manager_is_refused(cache: Path, tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", str(_fake_jdk(tmp_path / "jdk-25", "25.0.3")))
    with pytest.raises(NodeError, match="Java 25"):
        start_node(cache, port=free_port)


def test_missing_maven_points_to_docker_compose(cache: Path, java17: Path, free_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(NodeError, match="docker compose up -d"):
        start_node(cache, port=free_port)


def test_unreachable_maven_central_shows_mavens_error(cache: Path, java17: Path, free_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text("#!/bin/sh\necho '[ERROR] Could not transfer artifact x:y:zip:1: Connection refused -> [Help 1]'\necho '[ERROR] '\nexit 1\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    with pytest.raises(NodeError) as info:
        start_node(cache, port=free_port)
    message = str(info.value)
    assert "Could not transfer artifact x:y:zip:1: Connection refused" in message
    assert "docker compose up -d" in message
    assert not (cache / f"opensearch-{devtools.OPENSEARCH_VERSION}").exists()


def test_bad_heap_is_refused(cache: Path) -> None:
    with pytest.raises(NodeError, match="heap"):
        start_node(cache, heap="lots")


def test_status_and_stop_of_a_stopped_node(cache: Path, free_port: int) -> None:
    status = node_status(cache, port=free_port)
    assert status.running is False and status.pid is None and status.home is None
    assert status.url == f"http://127.0.0.1:{free_port}"
    assert stop_node(cache, port=free_port) is False


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert devtools.default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("MMRAG_CACHE_DIR")
    assert devtools.default_cache_dir() == Path.home() / ".cache" / "multi_modal_rag"


def test_old_import_path_still_works_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Import afresh: another module of the session may have imported (and so silenced) the old path already.
    monkeypatch.delitem(sys.modules, "multi_modal_rag.local_node", raising=False)
    monkeypatch.delattr(multi_modal_rag, "local_node", raising=False)
    with pytest.warns(DeprecationWarning, match="multi_modal_rag.local_node moved to multi_modal_rag.devtools"):
        old = importlib.import_module("multi_modal_rag.local_node")
    assert old.start_node is devtools.start_node and old.NodeError is devtools.NodeError
    assert old.DEFAULT_PORT == devtools.DEFAULT_PORT and old.default_cache_dir is devtools.default_cache_dir
