"""The migration guarantee under live traffic, on the real node with real models.

Every write acknowledged through the alias before, during or after a migration is afterwards in the
index the alias points at, in its latest version, with vectors of that index's model; every
acknowledged delete stays deleted; reads through the alias never fail. Checked by a history of
acknowledged writes, for a change of dimension (minilm -> mpnet) and of model at the same dimension.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import pytest

from multi_modal_rag import OpenSearchManager, Paper, migration, read_papers, store
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.errors import MigrationError
from multi_modal_rag.models import canonical_name

pytestmark = pytest.mark.node


@pytest.fixture(scope="session")
def rotated(tmp_path_factory) -> str:
    return rotated_copy("minilm", tmp_path_factory.mktemp("models") / "minilm-rotated")


def _papers(sample_path, n: int, skip: int = 0) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), skip, skip + n))


@dataclass
class History:
    """Acknowledged writes, in the order the (single) writer made them: id -> content hash, None once deleted."""

    expected: dict[str, str | None] = field(default_factory=dict)
    attempted: int = 0
    acknowledged: int = 0
    failed: list[str] = field(default_factory=list)
    longest_write: float = 0.0

    def check(self, client, alias: str) -> dict[str, int]:
        """Every acknowledged write present in its latest version in the alias's index, every delete absent."""
        index = store.resolve_alias(client, alias)
        spec = store.spec_of(client, index)
        client.indices.refresh(index=index)
        ids = [doc_id for doc_id in self.expected]
        found = {}
        for start in range(0, len(ids), 500):
            response = client.mget(index=index, body={"ids": ids[start:start + 500]},
                                   _source_includes=["content_hash", "model", "embedding"])
            found.update({d["_id"]: d["_source"] for d in response["docs"] if d.get("found")})
        problems = []
        for doc_id, digest in self.expected.items():
            if digest is None and doc_id in found:
                problems.append(f"{doc_id}: deleted, but present")
            elif digest is not None and doc_id not in found:
                problems.append(f"{doc_id}: written, but missing")
            elif digest is not None and found[doc_id]["content_hash"] != digest:
                problems.append(f"{doc_id}: an older version")
            elif digest is not None and (found[doc_id]["model"] != spec.model or len(found[doc_id]["embedding"]) != spec.dimension):
                problems.append(f"{doc_id}: vectors of {found[doc_id]['model']}, index is {spec.model}")
        assert not problems, f"{len(problems)} acknowledged writes not kept: {problems[:10]}"
        return {"checked": len(self.expected), "present": sum(d is not None for d in self.expected.values())}


class LiveTraffic:
    """A writer (inserts, updates, deletes at ~`rate` per second) and a reader, both through the alias."""

    def __init__(self, settings, alias: str, pool: list[Paper], initial: list[Paper], rate: float = 6.0):
        self.writer = OpenSearchManager(alias=alias, settings=settings, batch_size=8)  # follows the index's model
        self.reader = OpenSearchManager(alias=alias, settings=settings)
        self.pool, self.rate = list(pool), rate
        self.live = {p.doc_id(): p for p in initial}
        self.history = History(expected={p.doc_id(): p.content_hash() for p in initial})
        self.reads = self.read_failures = 0
        self.read_errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write_loop, daemon=True), threading.Thread(target=self._read_loop, daemon=True)]

    def __enter__(self) -> "LiveTraffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _write_loop(self) -> None:
        rng = random.Random(11)
        version = itertools.count()
        while not self.stop.is_set():
            op = rng.choice(["insert", "update", "update", "delete"]) if self.live else "insert"
            started = time.monotonic()
            self.history.attempted += 1
            try:
                if op == "insert" and self.pool:
                    paper = self.pool.pop()
                elif op in ("update", "insert"):
                    old = self.live[rng.choice(sorted(self.live))]
                    paper = Paper(**{**old.__dict__, "abstract": f"{old.abstract} Revision {next(version)}."})
                else:
                    doc_id = rng.choice(sorted(self.live))
                    self.writer.delete([doc_id])  # raises if not acknowledged
                    self.live.pop(doc_id)
                    self.history.expected[doc_id] = None
                    self.history.acknowledged += 1
                    continue
                summary = self.writer.index_all([paper], refresh=False)
                if summary.failed:
                    self.history.failed.append(f"{paper.doc_id()}: {summary.failures[0].reason}")
                    continue
                self.live[paper.doc_id()] = paper
                self.history.expected[paper.doc_id()] = paper.content_hash()
                self.history.acknowledged += 1
            except Exception as exc:  # noqa: BLE001 - counted: an unacknowledged write is allowed, a lost one is not
                self.history.failed.append(f"{op}: {exc}")
            finally:
                self.history.longest_write = max(self.history.longest_write, time.monotonic() - started)
            self.stop.wait(1.0 / self.rate)

    def _read_loop(self) -> None:
        queries = itertools.cycle(["vitamin deficiency", "protein folding", "cancer cells", "gene expression"])
        while not self.stop.is_set():
            self.reads += 1
            try:
                self.reader.search(next(queries), mode="hybrid", size=5)
            except Exception as exc:  # noqa: BLE001
                self.read_failures += 1
                self.read_errors.append(str(exc)[:200])
            self.stop.wait(0.1)


@pytest.mark.parametrize("to_model", ["rotated", "mpnet"])
def test_no_acknowledged_write_is_lost_across_a_live_migration(to_model, rotated, settings, client, index_name, sample_path):
    target_model = rotated if to_model == "rotated" else "mpnet"
    initial, pool = _papers(sample_path, 60), _papers(sample_path, 80, skip=60)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 60
    with LiveTraffic(settings, index_name, pool, initial) as traffic:
        time.sleep(2)  # writes before
        state = migration.Migrator(index_name, target_model, settings=settings, page_size=16).run()
        time.sleep(3)  # writes after the swap, through the same (long-lived) writer and reader
    assert state.status == "swapped" and store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    assert store.spec_of(client, f"{index_name}-v2").model == canonical_name(target_model)
    counts = traffic.history.check(client, index_name)
    assert traffic.history.acknowledged >= 20 and counts["checked"] >= 60
    assert traffic.read_failures == 0, traffic.read_errors[:3]
    assert not traffic.history.failed, traffic.history.failed[:3]  # our writers wait through the hand-over
    assert store.write_blocked(client, f"{index_name}-v1")  # the old index is the frozen copy


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
        with pytest.raises(MigrationError, match="is running in"):
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
