"""The migration guarantee under live traffic, on the real node with real models.

Every write acknowledged through the alias before, during or after a migration is afterwards in the
index the alias points at, in its latest version, with vectors of that index's model; every
acknowledged delete stays deleted; reads through the alias never fail. Checked by a history of
acknowledged writes, for a change of dimension (minilm -> mpnet) and of model at the same dimension.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from multi_modal_rag import OpenSearchManager, Paper, migration, read_papers, store
from multi_modal_rag.devtools.traffic import History, LiveTraffic
from multi_modal_rag.errors import MigrationError
from multi_modal_rag.models import canonical_name

pytestmark = pytest.mark.node


def _papers(sample_path, n: int, skip: int = 0) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), skip, skip + n))


# minilm -> mpnet (a change of dimension) under a writer takes a few minutes here (mpnet re-embeds about a paper a
# second); it guards the guarantee, so it runs in the default run too.
@pytest.mark.parametrize("to_model", ["rotated", "mpnet"])
def test_no_acknowledged_write_is_lost_across_a_live_migration(to_model, rotated, settings, client, index_name, sample_path):
    target_model = rotated if to_model == "rotated" else "mpnet"
    size = 60 if to_model == "rotated" else 30  # (mpnet re-embeds about a paper a second here)
    initial, pool = _papers(sample_path, size), _papers(sample_path, 80, skip=60)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == size
    # mpnet embeds about one paper a second on 2 cores: a writer faster than that outruns any catch-up.
    rate = 6.0 if to_model == "rotated" else 1.0
    with LiveTraffic(settings, index_name, pool, initial, rate=rate) as traffic:
        time.sleep(2)  # writes before
        state = migration.Migrator(index_name, target_model, settings=settings, page_size=16).run()
        time.sleep(3)  # writes after the swap, through the same (long-lived) writer and reader
    assert state.status == "swapped" and store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    assert store.spec_of(client, f"{index_name}-v2").model == canonical_name(target_model)
    counts = traffic.history.check(client, index_name)
    assert traffic.history.acknowledged >= 20 and counts["checked"] >= size
    assert traffic.read_failures == 0, traffic.read_errors[:3]
    assert not traffic.history.failed, traffic.history.failed[:3]  # our writers wait through the hand-over
    assert store.write_blocked(client, f"{index_name}-v1")  # the old index is the frozen copy
    assert traffic.reader.model_name == traffic.writer.model_name == canonical_name(target_model)


@pytest.mark.parametrize("step", [s for s in migration.STEPS if s != "finished"])
def test_a_crash_at_any_step_resumes_to_the_guarantee(step, rotated, settings, client, index_name, sample_path):
    initial, pool = _papers(sample_path, 24), _papers(sample_path, 12, skip=24)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 24

    class Crash(Exception):
        pass

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        migration.Migrator(index_name, rotated, settings=settings, page_size=8, on_step=crash).run()
    # Writes between the crash and the resume (they wait if the crash left the old index write-blocked).
    traffic = LiveTraffic(settings, index_name, pool, initial, rate=20)
    with traffic:
        time.sleep(1.5)
        state = migration.load_state(client, index_name)
        if state.status != "swapped":
            state = migration.Migrator(index_name, rotated, settings=settings, page_size=8).run(resume=True)
        time.sleep(1.5)
    assert state.status == "swapped" and store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    traffic.history.check(client, index_name)
    assert traffic.read_failures == 0 and not traffic.history.failed, (traffic.read_errors + traffic.history.failed)[:3]


def test_one_migration_per_alias_at_a_time(rotated, settings, client, index_name, sample_path):
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(_papers(sample_path, 24)).created == 24
    paused, go_on = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold(step: str) -> None:
        if step == "page-copied" and not paused.is_set():
            paused.set()
            go_on.wait(60)

    def first() -> None:
        try:
            outcome["state"] = migration.Migrator(index_name, rotated, settings=settings, page_size=8, on_step=hold).run()
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    runner = threading.Thread(target=first)
    runner.start()
    assert paused.wait(60)
    try:
        with pytest.raises(MigrationError, match="is running in"):
            migration.Migrator(index_name, rotated, settings=settings).run()
        with pytest.raises(MigrationError, match="is running in"):
            migration.Migrator(index_name, rotated, settings=settings).run(resume=True)
        with pytest.raises(MigrationError, match="is running in"):
            migration.rollback(client, index_name)
        with pytest.raises(MigrationError, match="unfinished"):  # refused before it waits for the lease
            migration.cleanup(client, index_name)
    finally:
        go_on.set()
        runner.join(120)
    assert outcome["state"].status == "swapped", outcome.get("error")


def test_rollback_after_the_swap_carries_writes_back(rotated, settings, client, index_name, sample_path):
    initial, extra = _papers(sample_path, 20), _papers(sample_path, 3, skip=20)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 20
    migration.Migrator(index_name, rotated, settings=settings).run()
    app = OpenSearchManager(alias=index_name, settings=settings)  # follows the new model
    assert app.index_all(extra).created == 3
    changed = Paper(**{**initial[0].__dict__, "abstract": "Rewritten after the swap."})
    assert app.index_all([changed]).updated == 1
    assert app.delete([initial[1].doc_id()]) == 1

    state = migration.rollback(client, index_name)
    assert state.status == "rolled_back" and store.alias_indices(client, index_name) == [f"{index_name}-v1"]
    history = History(expected={p.doc_id(): p.content_hash() for p in initial + extra})
    history.expected[changed.doc_id()] = changed.content_hash()
    history.expected[initial[1].doc_id()] = None
    history.check(client, index_name)  # in the old index, with the old model's vectors
    assert "carried back 3 new, 1 changed and 1 deleted" in state.message

    store.set_write_block(client, f"{index_name}-v2", False)  # someone writes into the index the alias left
    client.index(index=f"{index_name}-v2", id="stray", body={"paper_id": "stray", "title": "late"}, refresh=True)
    with pytest.raises(MigrationError, match="writes after the alias left it"):
        migration.cleanup(client, index_name)
    client.delete(index=f"{index_name}-v2", id="stray", refresh=True)
    with pytest.raises(MigrationError, match="writes after the alias left it"):  # a delete is a write too
        migration.cleanup(client, index_name)
