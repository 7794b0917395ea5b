"""Node loss on a real 3-node cluster (`mmrag node start --nodes 3`), with 1 replica of every shard.

One node is SIGKILLed while searching, writing and migrating through the alias; the client knows all three
nodes (OPENSEARCH_URL as a list). The guarantees: no failed search, every acknowledged write there afterwards
(`History.check`), the migration finishes. These tests start their own cluster on ports 9241-9243 and
stop it at the end; they are marked `cluster` (`pytest -m "not cluster"` leaves them out).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from multi_modal_rag import OpenSearchManager, Paper
from multi_modal_rag.connection import ConnectionSettings, make_client
from multi_modal_rag.devtools import local_cluster
from multi_modal_rag.devtools.traffic import LiveTraffic
from multi_modal_rag.migration.run import Migrator

FIRST_PORT, NODES = 9241, 3
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_papers.jsonl"

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[ConnectionSettings]:
    try:
        status = local_cluster.start_cluster(first_port=FIRST_PORT, nodes=NODES)
        yield ConnectionSettings(url=status.url, timeout=90)
    finally:
        local_cluster.stop_cluster(first_port=FIRST_PORT, nodes=NODES)


@pytest.fixture
def alias(cluster: ConnectionSettings) -> Iterator[str]:
    name = f"cluster-{int(time.time() * 1000) % 10**8}"
    yield name
    client = make_client(cluster)
    client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)
    client.delete(index="mmrag-migrations", id=name, params={"ignore": 404})


def _papers(n: int, skip: int = 0) -> list[Paper]:
    with SAMPLE.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in itertools.islice(handle, skip, skip + n)]
    return [Paper(id=r["id"], title=r["title"], abstract=r.get("abstract", "")) for r in records]


def _wait_green(settings: ConnectionSettings, timeout: str = "120s") -> None:
    health = make_client(settings).cluster.health(wait_for_status="green", wait_for_nodes=str(NODES), params={"timeout": timeout},
                                                  request_timeout=150)
    assert health["status"] == "green" and not health["timed_out"], health


def _primary_node_port(settings: ConnectionSettings, index: str) -> int:
    """The HTTP port of a node holding a primary shard of `index` (losing it forces a replica's promotion)."""
    client = make_client(settings)
    nodes = client.nodes.info(metric="http")["nodes"]
    port_of = {info["name"]: int(info["http"]["publish_address"].rsplit(":", 1)[1]) for info in nodes.values()}
    shards = client.cat.shards(index=index, format="json")
    return port_of[next(s["node"] for s in shards if s["prirep"] == "p")]


def _restart(settings: ConnectionSettings) -> None:
    local_cluster.start_cluster(first_port=FIRST_PORT, nodes=NODES)  # starts the node that is down
    _wait_green(settings)


def test_search_and_writes_go_on_when_a_node_holding_a_primary_is_killed(cluster, alias):
    manager = OpenSearchManager(alias=alias, model="minilm", settings=cluster, shards=2, replicas=1)
    initial, pool = _papers(30), _papers(40, skip=30)
    assert manager.index_all(initial).failed == 0
    _wait_green(cluster)
    victim = _primary_node_port(cluster, manager.binding.index)

    with LiveTraffic(cluster, alias, pool=pool, initial=initial, rate=4.0) as traffic:
        time.sleep(4)
        reads_before = traffic.reads
        local_cluster.kill_member(None, FIRST_PORT, victim)
        time.sleep(12)  # the cluster notices, promotes the replica, goes on yellow
        reads_while_down = traffic.reads - reads_before
        _restart(cluster)
        time.sleep(3)
    report = traffic.history.check(make_client(cluster), alias)
    print(f"\nnode {victim} killed: {traffic.reads} searches ({reads_while_down} while it was down), "
          f"{traffic.history.attempted} writes attempted, {traffic.history.acknowledged} acknowledged, "
          f"{len(traffic.history.failed)} refused; {report}")
    assert traffic.read_failures == 0, traffic.read_errors[:3]
    assert reads_while_down > 10
    assert traffic.history.acknowledged > 20
    assert not traffic.history.failed, traffic.history.failed[:3]


def test_bulk_indexing_through_a_node_kill_loses_nothing(cluster, alias):
    manager = OpenSearchManager(alias=alias, model="minilm", settings=cluster, shards=2, replicas=1, batch_size=8)
    papers = _papers(80)
    manager.binding.ensure_index()
    _wait_green(cluster)
    victim = _primary_node_port(cluster, manager.binding.index)
    results = []
    for result in manager.index_documents(papers):
        results.append(result)
        if len(results) == 24:
            local_cluster.kill_member(None, FIRST_PORT, victim)
    failed = [r for r in results if r.outcome == "failed"]
    _restart(cluster)
    if failed:  # reported, then fixed by --pending, as the README says
        assert manager.index_all(papers, pending=True).failed == 0
    client = make_client(cluster)
    client.indices.refresh(index=alias)
    stored = {d["_id"]: d["_source"]["content_hash"]
              for d in client.mget(index=alias, body={"ids": [p.doc_id() for p in papers]}, _source_includes=["content_hash"])["docs"]
              if d.get("found")}
    print(f"\nnode {victim} killed after 24 of 80 papers: {len(failed)} reported failed and indexed again")
    assert stored == {p.doc_id(): p.content_hash() for p in papers}


def test_migration_finishes_when_a_node_is_killed_during_the_copy(cluster, alias):
    manager = OpenSearchManager(alias=alias, model="minilm", settings=cluster, shards=2, replicas=1)
    papers = _papers(120)
    assert manager.index_all(papers).failed == 0
    _wait_green(cluster)
    victim = _primary_node_port(cluster, manager.binding.index)
    killed = threading.Event()

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "copy" and done >= 32 and not killed.is_set():
            killed.set()
            local_cluster.kill_member(None, FIRST_PORT, victim)

    migrator = Migrator(alias, "minilm", settings=cluster, to_precision="int8", page_size=16, on_progress=on_progress)
    try:
        state = migrator.run()
    finally:
        migrator.close()
    _restart(cluster)
    assert killed.is_set()
    assert state.status == "swapped", state
    client = make_client(cluster)
    index = next(iter(client.indices.get_alias(name=alias)))
    assert index == state.target_index
    stored = {d["_id"]: d["_source"]["content_hash"]
              for d in client.mget(index=alias, body={"ids": [p.doc_id() for p in papers]}, _source_includes=["content_hash"])["docs"]
              if d.get("found")}
    assert stored == {p.doc_id(): p.content_hash() for p in papers}


def test_a_client_given_one_node_finds_the_others_by_sniffing(cluster):
    first = cluster.hosts[0]
    sniffing = make_client(ConnectionSettings(url=first, sniff=True))
    assert sniffing.cluster.health()["number_of_nodes"] == NODES
    hosts = sorted(c.host for c in sniffing.transport.connection_pool.connections)
    assert len(hosts) == NODES and all(h.startswith("http://127.0.0.1:92") for h in hosts), hosts
