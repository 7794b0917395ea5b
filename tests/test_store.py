"""The OpenSearch layer on the real node: point-in-time scans, shard checkpoints, write blocks."""

from __future__ import annotations

import pytest
from opensearchpy.exceptions import AuthorizationException

from multi_modal_rag import store


@pytest.fixture
def plain_index(client, index_name) -> str:
    name = f"{index_name}-v1"
    client.indices.create(index=name, body={"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                            "mappings": {"properties": {"paper_id": {"type": "keyword"}}}})
    for i in range(30):
        client.index(index=name, id=f"p{i:02d}", body={"paper_id": f"p{i:02d}", "title": f"paper {i}"})
    client.indices.refresh(index=name)
    return name


def test_a_scan_whose_point_in_time_expired_reopens_it_and_misses_nothing(client, plain_index):
    pages = store.scan_sources(client, plain_index, fields=["paper_id"], page_size=7)
    first = next(pages)
    client.delete_all_pits()  # what an expired keep-alive looks like to the next page
    rest = [source for page in pages for source in page]
    assert [s["paper_id"] for s in first + rest] == [f"p{i:02d}" for i in range(30)]


def test_a_scan_that_lost_a_node_reopens_its_point_in_time_and_misses_nothing(client, plain_index, monkeypatch):
    """A 5xx on a page (a node holding part of the point-in-time was lost) re-opens it after a pause; a partial
    page is never taken for the whole."""
    from opensearchpy.exceptions import TransportError

    real_search, failures = client.search, iter([TransportError(500, "search_phase_execution_exception", "Node not connected")])
    calls = []

    def search(*args, **kwargs):
        calls.append(kwargs.get("params"))
        if len(calls) == 2 and (failure := next(failures, None)):
            raise failure
        return real_search(*args, **kwargs)

    monkeypatch.setattr(client, "search", search)
    monkeypatch.setattr(store.scan, "time", type("T", (), {"sleep": staticmethod(lambda s: None)}))
    ids = [s["paper_id"] for page in store.scan_sources(client, plain_index, fields=["paper_id"], page_size=7) for s in page]
    assert ids == [f"p{i:02d}" for i in range(30)]
    assert all(params == {"allow_partial_search_results": "false"} for params in calls)
    monkeypatch.setattr(client, "search", lambda *a, **k: (_ for _ in ()).throw(TransportError(400, "bad", "request")))
    with pytest.raises(TransportError):  # a 4xx is not a lost node: no retry
        next(store.scan_sources(client, plain_index, fields=["paper_id"]))


def test_shard_checkpoints_count_every_write(client, plain_index):
    before = store.shard_checkpoints(client, plain_index)
    assert set(before) == {"0", "1"} and sum(before.values()) == 30 - 2  # seq_no starts at 0 on each shard
    client.index(index=plain_index, id="p05", body={"paper_id": "p05", "title": "changed"})
    client.delete(index=plain_index, id="p06")
    after = store.shard_checkpoints(client, plain_index)
    assert sum(after.values()) - sum(before.values()) == 2


def test_a_write_block_refuses_writes_and_keeps_reads(client, plain_index):
    store.set_write_block(client, plain_index, True)
    assert store.write_blocked(client, plain_index)
    with pytest.raises(AuthorizationException, match="cluster_block_exception"):
        client.index(index=plain_index, id="new", body={"paper_id": "new"})
    assert client.count(index=plain_index)["count"] == 30
    store.set_write_block(client, plain_index, False)
    assert not store.write_blocked(client, plain_index)
    client.index(index=plain_index, id="new", body={"paper_id": "new"})


def test_inherited_settings_carry_shards_replicas_and_refresh(client, plain_index):
    client.indices.put_settings(index=plain_index, body={"index": {"refresh_interval": "5s"}})
    assert store.inherited_settings(client, plain_index) == {"number_of_shards": "2", "number_of_replicas": "0",
                                                             "refresh_interval": "5s"}


def test_a_dead_node_in_the_url_list_is_skipped_and_requests_go_to_a_live_one(opensearch_url):
    """Requests that cannot connect are retried on the next node of OPENSEARCH_URL's list."""
    import socket

    from multi_modal_rag.connection import ConnectionSettings, make_client

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = make_client(ConnectionSettings(url=f"{dead},{opensearch_url}", timeout=5))
    for _ in range(6):  # round robin would send half of these to the dead node
        assert client.cluster.health()["status"] in ("green", "yellow")
