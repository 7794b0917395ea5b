"""One error policy: opensearch-py's exceptions become one-line package errors, chained, on every public call."""

from __future__ import annotations

import pytest
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OSConnectionError, NotFoundError, RequestError, TransportError

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings
from multi_modal_rag.errors import ConnectionFailedError, IndexNotFoundError, OpenSearchRequestError
from multi_modal_rag.store import describe, translated

DEAD = "http://127.0.0.1:1"


def test_a_refused_connection_says_connection_refused_and_keeps_the_cause():
    client = OpenSearch(hosts=[DEAD], max_retries=0)
    with pytest.raises(ConnectionFailedError) as info:
        with translated(DEAD, "status"):
            client.info()
    message = str(info.value)
    assert message.startswith(f"Cannot reach OpenSearch at {DEAD} (status): connection refused.")
    assert "urllib3" not in message and "object at 0x" not in message and "\n" not in message
    assert isinstance(info.value.__cause__, OSConnectionError)


def test_a_rejected_request_names_the_status_and_the_reason():
    raw = RequestError(400, "search_phase_execution_exception", {
        "error": {"root_cause": [{"type": "illegal_argument_exception", "reason": "query vector has invalid dimension"}]},
    })
    assert describe(raw) == "400 illegal_argument_exception: query vector has invalid dimension"
    with pytest.raises(OpenSearchRequestError, match=r"refused a request \(knn search\): 400 illegal_argument") as info:
        with translated("http://node:9200", "knn search"):
            raise raw
    assert info.value.__cause__ is raw


def test_not_found_becomes_index_not_found():
    with pytest.raises(IndexNotFoundError) as info:
        with translated("http://node:9200"):
            raise NotFoundError(404, "index_not_found_exception", {"error": {"type": "index_not_found_exception",
                                                                             "reason": "no such index [x]"}})
    assert "no such index [x]" in str(info.value)


@pytest.mark.parametrize("call", ["count", "delete", "refresh", "status", "search"])
def test_no_public_call_leaks_a_client_error_on_a_missing_alias(settings, index_name, call):
    manager = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    calls = {"count": manager.count, "delete": lambda: manager.delete(["a"]), "refresh": manager.refresh,
             "status": manager.status, "search": lambda: manager.search("anything", mode="bm25")}
    with pytest.raises(IndexNotFoundError) as info:
        calls[call]()
    assert not isinstance(info.value, TransportError) and index_name in str(info.value)


@pytest.mark.parametrize("call", ["count", "delete", "status", "ensure_index"])
def test_no_public_call_leaks_a_client_error_on_a_dead_node(index_name, call):
    manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url=DEAD, timeout=1))
    calls = {"count": manager.count, "delete": lambda: manager.delete(["a"]), "status": manager.status,
             "ensure_index": manager.ensure_index}
    with pytest.raises(ConnectionFailedError, match=f"Cannot reach OpenSearch at {DEAD}.*connection refused"):
        calls[call]()
