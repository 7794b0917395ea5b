"""Shared fixtures: one real OpenSearch node per session, and an index name per test.

The node is, in order: $OPENSEARCH_URL if set; a testcontainers OpenSearchContainer when a
Docker engine answers; otherwise the local node (`mmrag node start`), stopped afterwards
if this session started it. Tests that use the node are marked `node`: `pytest -m "not node"` runs the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from opensearchpy import OpenSearch

from multi_modal_rag.connection import ConnectionSettings, make_client

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a model hub

OPENSEARCH_IMAGE = "opensearchproject/opensearch:2.19.1"
DEDICATED_PORT = 9230  # a node tests may stop: not 9200 (the default session node) nor 9201 (used by someone else)
DEDICATED_HEAP = "512m"
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `node` every test that needs the real node: it uses `opensearch_url`, directly or through
    `settings`, `client`, `index_name` (the fixture closure holds every fixture a test depends on)."""
    for item in items:
        if "opensearch_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.node)


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    """The URL of a real OpenSearch 2.19 node with k-NN and neural-search."""
    if os.environ.get("OPENSEARCH_URL"):
        yield os.environ["OPENSEARCH_URL"]
        return
    if _docker_engine_answers():
        try:
            from testcontainers.community.opensearch import OpenSearchContainer
        except ImportError:  # testcontainers < 4.15
            from testcontainers.opensearch import OpenSearchContainer

        with OpenSearchContainer(OPENSEARCH_IMAGE, security_enabled=False) as container:
            config = container.get_config()
            yield f"http://{config['host']}:{config['port']}"
        return
    from multi_modal_rag import devtools as local_node

    port = int(os.environ.get("MMRAG_TEST_PORT", local_node.DEFAULT_PORT))
    was_running = local_node.node_status(port=port).running
    status = local_node.start_node(port=port)
    yield status.url
    if not was_running:
        local_node.stop_node(port=port)


@pytest.fixture(scope="session")
def dedicated_url() -> Iterator[str]:
    """A local node of our own on port 9230, for tests that stop and restart it; stopped at the end whatever happens."""
    from multi_modal_rag import devtools as local_node

    try:
        status = local_node.start_node(port=DEDICATED_PORT, heap=DEDICATED_HEAP)
        client = make_client(ConnectionSettings(url=status.url))
        client.indices.delete(index="faults-*,serve-*", expand_wildcards="all", ignore_unavailable=True)  # leftovers
        yield status.url
    finally:
        local_node.stop_node(port=DEDICATED_PORT)


@pytest.fixture(scope="session")
def settings(opensearch_url: str) -> ConnectionSettings:
    return ConnectionSettings(url=opensearch_url)


@pytest.fixture(scope="session")
def client(settings: ConnectionSettings) -> OpenSearch:
    return make_client(settings)


@pytest.fixture
def index_name(client: OpenSearch) -> Iterator[str]:
    """A fresh alias/index name for one test; every index under it is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)
    client.delete(index="mmrag-migrations", id=name, params={"ignore": 404})
    client.indices.delete_index_template(name=f"mmrag-guard-{name}", params={"ignore": 404})
    if client.indices.exists(index=name):
        client.indices.delete(index=name)


@pytest.fixture(scope="session")
def minilm():
    from multi_modal_rag.models import load_embedder

    return load_embedder("minilm")


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return REPO / "data" / "sample_papers.jsonl"


@pytest.fixture(scope="session")
def rotated(tmp_path_factory) -> str:
    """MiniLM followed by a fixed rotation: another model of the same dimension and quality (see `rotated_model`)."""
    from multi_modal_rag.devtools.rotated_model import rotated_copy

    return rotated_copy("minilm", tmp_path_factory.mktemp("models") / "minilm-rotated")
