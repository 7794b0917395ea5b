"""The migration guarantee when the run itself misbehaves: paused past its lease, raced by a resume or a rollback,
or handed writes the happy path never sees. Real node, real models, real processes (SIGSTOP/SIGCONT).

Each test keeps a history of acknowledged writes and checks it afterwards (`History.check`): every write
acknowledged through the alias is in the index the alias points at, in its latest version; every delete holds.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from multi_modal_rag import OpenSearchManager, Paper, migration, read_papers, store
from multi_modal_rag.devtools import paused_run
from multi_modal_rag.devtools.traffic import History, LiveTraffic
from multi_modal_rag.errors import MMRagError
from multi_modal_rag.migration import state as lease
from multi_modal_rag.migration.sync import changed_since, moved_terms

pytestmark = pytest.mark.node

LEASE = 4.0  # seconds, for the runs of these tests (MMRAG_LEASE_SECONDS in a child process)

def _papers(sample_path, n: int, skip: int = 0) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), skip, skip + n))


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setattr(lease, "LEASE_SECONDS", LEASE)
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", LEASE / 6)


def test_a_run_paused_past_its_lease_before_the_swap_cannot_swap_after_a_rollback(
        short_lease, rotated, settings, client, index_name, sample_path):
    initial, pool = _papers(sample_path, 24), _papers(sample_path, 12, skip=24)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 24
    # Paused after its last lease check, right before the `_aliases` call: only the fence can stop it now.
    run = paused_run.start(settings, index_name, rotated, "swap-ready", lease_seconds=LEASE)
    assert store.write_blocked(client, f"{index_name}-v1")
    try:
        state = migration.rollback(client, index_name)  # waits out the lease, then takes it
        assert state.status == "rolled_back"
        with LiveTraffic(settings, index_name, pool, initial, rate=10) as traffic:
            time.sleep(2.5)  # writes acknowledged in the old index, which the stale run would leave behind
    finally:
        code, output = paused_run.wake(run)
    assert code == 3 and "fenced off" in output, output
    assert store.alias_indices(client, index_name) == [f"{index_name}-v1"]
    assert traffic.history.acknowledged >= 10 and not traffic.history.failed, traffic.history.failed[:3]
    traffic.history.check(client, index_name)
    assert migration.cleanup(client, index_name) == [f"{index_name}-v2"]  # the only copy was never at risk
    traffic.history.check(client, index_name)


def test_a_run_paused_mid_copy_cannot_touch_the_index_a_resume_swapped_in(
        short_lease, rotated, settings, client, index_name, sample_path):
    initial = _papers(sample_path, 40)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 40
    run = paused_run.start(settings, index_name, rotated, "page-copied", 2, lease_seconds=LEASE)  # 16 of 40 copied
    try:
        state = migration.Migrator(index_name, rotated, settings=settings, page_size=8).run(resume=True)
        assert state.status == "swapped"
        app = OpenSearchManager(alias=index_name, settings=settings)  # the app, on the new index now
        history = History(expected={p.doc_id(): p.content_hash() for p in initial})
        updated = [Paper(**{**p.__dict__, "abstract": f"{p.abstract} Revised after the swap."}) for p in initial[16:]]
        assert app.index_all(updated).updated == len(updated)  # the pages the stale run has still to copy
        history.expected.update({p.doc_id(): p.content_hash() for p in updated})
        gone = [p.doc_id() for p in initial[30:34]]
        assert app.delete(gone) == 4
        history.expected.update(dict.fromkeys(gone))
    finally:
        code, output = paused_run.wake(run)
    assert code == 3 and "fenced off" in output, output
    history.check(client, index_name)


def test_bulks_in_flight_when_the_block_lands_are_handed_over(rotated, settings, client, index_name, sample_path):
    initial = _papers(sample_path, 24)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 24
    acknowledged: dict[str, str] = {}
    refused = threading.Event()

    def big_bulks() -> None:  # back to back through the alias, the way any other client writes, until one is refused
        for round_ in range(12):
            body = []
            for i in range(400):
                doc_id = f"bulk-{round_}-{i}"
                body += [{"index": {"_index": index_name, "_id": doc_id}},
                         {"paper_id": doc_id, "title": f"In flight {round_} {i}", "content_hash": "stale"}]
            for item in client.bulk(body=body)["items"]:
                if item["index"].get("status") in (200, 201):
                    acknowledged[item["index"]["_id"]] = item["index"]["_id"].replace("bulk-", "In flight ").replace("-", " ")
                else:
                    refused.set()
            if refused.is_set():
                return

    writer = threading.Thread(target=big_bulks, daemon=True)
    state = migration.Migrator(index_name, rotated, settings=settings, page_size=64,
                               on_step=lambda step: step == "caught-up" and not writer.is_alive() and writer.start()).run()
    writer.join(120)
    assert state.status == "swapped" and acknowledged
    client.indices.refresh(index=index_name)
    ids = list(acknowledged)
    for start in range(0, len(ids), 500):
        docs = client.mget(index=index_name, body={"ids": ids[start:start + 500]}, _source_includes=["title"])["docs"]
        missing = [d["_id"] for d in docs if not d.get("found") or d["_source"]["title"] != acknowledged[d["_id"]]]
        assert not missing, f"{len(missing)} acknowledged bulk items not handed over: {missing[:5]}"


def test_a_partial_update_through_the_alias_during_catch_up_is_carried_over(
        rotated, settings, client, index_name, sample_path):
    initial = _papers(sample_path, 24)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 24
    victim = initial[5].doc_id()

    def rename(step: str) -> None:  # the stored content_hash stays as it was
        if step == "caught-up":
            client.update(index=index_name, id=victim, body={"doc": {"title": "Renamed in place"}}, refresh=True)

    state = migration.Migrator(index_name, rotated, settings=settings, page_size=8, on_step=rename).run()
    assert state.status == "swapped"
    assert client.get(index=index_name, id=victim)["_source"]["title"] == "Renamed in place"


def test_a_lease_lapses_by_the_takers_clock_not_the_holders(short_lease, settings, client, index_name):
    skewed = migration.MigrationState(alias=index_name, source_index=f"{index_name}-v1", target_index=f"{index_name}-v2",
                                      from_model="a", to_model="b", source_dimension=1, target_dimension=1,
                                      status="copying", lease_owner="elsewhere:1:abc", started_at=lease.now(),
                                      lease_expires=time.time() + 86400)  # a holder whose clock runs a day ahead
    client.indices.create(index=f"{index_name}-v1")
    migration.save_state(client, skewed)
    started = time.monotonic()
    state = migration.rollback(client, index_name)  # never heartbeats: lapses after LEASE of our own clock
    assert state.status == "rolled_back" and time.monotonic() - started >= LEASE


def test_a_holder_in_another_pid_namespace_is_never_judged_gone():
    mine = lease._process_identity()
    boot, namespace, pid, started = mine.rsplit("/", 3)
    state = migration.MigrationState(alias="a", source_index="x", target_index="y", from_model="m", to_model="n",
                                     source_dimension=1, target_dimension=1, status="copying", lease_expires=1.0)
    state.lease_process = f"{boot}/pid:[1]/999999/1"  # same host name and boot, a container's namespace
    assert not lease._owner_is_gone(state)
    state.lease_process = f"{boot}/{namespace}/999999999/1"  # here, and no such process
    assert lease._owner_is_gone(state)
    state.lease_process = f"{boot}/{namespace}/{pid}/{int(started) + 1}"  # our pid, another start: a reused pid
    assert lease._owner_is_gone(state)
    state.lease_process = mine
    assert not lease._owner_is_gone(state)


def test_a_state_save_retried_after_it_succeeded_keeps_the_lease(client, index_name):
    states = migration.StateStore(client, index_name)
    state = migration.MigrationState(alias=index_name, source_index="x", target_index="y", from_model="m",
                                     to_model="n", source_dimension=1, target_dimension=1, status="copying",
                                     started_at=lease.now())
    states.create(state)
    before = states._version
    states.save(state)
    states._version = before  # the client timed out on that save and sent it again (retry_on_timeout)
    states._write(state)
    assert states.lost is None
    state.copied = 7
    states.save(state)
    assert migration.load_state(client, index_name).copied == 7


def test_catch_up_reads_a_shard_whose_primary_term_moved_whole(client, index_name):
    client.indices.create(index=index_name, body={"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                                  "mappings": {"properties": {"paper_id": {"type": "keyword"}}}})
    for i in range(10):
        client.index(index=index_name, id=f"p{i}", body={"paper_id": f"p{i}"})
    client.indices.refresh(index=index_name)
    marks = store.shard_checkpoints(client, index_name)
    terms, rescan = moved_terms(client, index_name, store.primary_terms(client, index_name))
    assert rescan == set() and not list(changed_since(client, index_name, marks, 100))
    _, rescan = moved_terms(client, index_name, {shard: term - 1 for shard, term in terms.items() if shard == "1"} | {"0": terms["0"]})
    assert rescan == {"1"}
    seen = [d["paper_id"] for page in changed_since(client, index_name, marks, 100, rescan=rescan) for d in page]
    assert seen and len(seen) == int(client.count(index=index_name, params={"preference": "_shards:1"})["count"])


def test_marks_of_an_index_without_a_started_primary_are_a_clear_error(client, index_name):
    client.indices.create(index=index_name, params={"wait_for_active_shards": "0"}, body={"settings": {
        "number_of_replicas": 0, "index.routing.allocation.require._name": "no-such-node"}})
    with pytest.raises(MMRagError, match="no started primary"):
        store.shard_checkpoints(client, index_name)
