"""Writers never write to an index the alias left, deletes follow the alias, and only a migration's block is waited for.

Real node, real models: a writer holds its stale binding (inside its embedding, or between embedding and its
bulk request) while a migration swaps the alias and `cleanup` deletes the old index; a delete goes through a
writer bound before the migration; a disk flood-stage block fails papers at once instead of being waited for.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from multi_modal_rag import OpenSearchManager, Paper, migration, read_papers, store
from multi_modal_rag import writer as writer_module
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.devtools.traffic import History
from multi_modal_rag.errors import OpenSearchRequestError
from multi_modal_rag.models import canonical_name

# Reasons as OpenSearch 2.19 gives them in bulk items (`cluster_block_exception`).
WRITE_API = "index [papers-v1] blocked by: [FORBIDDEN/8/index write (api)];"
ADDING_WRITE = "index [papers-v1] blocked by: [FORBIDDEN/8/moving to block index write (api)];"  # _block/write, until acked
FLOOD = ("index [papers-v1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has "
         "read-only-allow-delete block];")
READ_ONLY = "index [papers-v1] blocked by: [FORBIDDEN/5/index read-only (api)];"
CLUSTER_READ_ONLY = "blocked by: [FORBIDDEN/6/cluster read-only (api)];"


def _block(reason: str) -> dict[str, str]:
    return {"type": "cluster_block_exception", "reason": reason}


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> str:
    return rotated_copy("minilm", tmp_path_factory.mktemp("models") / "minilm-rotated")


def _papers(sample_path, n: int, skip: int = 0) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), skip, skip + n))


def test_the_guard_template_blocks_and_marks_every_version_of_its_alias_only():
    body = store.guard_template("papers")
    assert body["index_patterns"] == ["papers-v*"]
    assert body["template"]["settings"]["index"]["blocks"]["write"] is True
    assert body["template"]["mappings"]["_meta"] == {"mmrag_orphan": True}
    # Overlapping patterns (alias `papers-v2` under `papers-v*`) need different priorities, or the node refuses one.
    assert store.guard_template("papers-v2")["priority"] != body["priority"] >= 1_000_000


def test_our_own_index_creation_overrides_the_guard():
    class Indices:
        def create(self, index, body):
            self.body = body

    class Client:
        indices = Indices()

    store.create_index(Client(), "papers-v3", store.IndexSpec(model="m", dimension=4), settings={"number_of_replicas": 1})
    body = Client.indices.body
    assert body["settings"]["index"]["blocks"] == {"write": False}
    assert body["settings"]["index"]["number_of_replicas"] == 1
    assert body["mappings"]["_meta"]["mmrag_orphan"] is False and body["mappings"]["_meta"]["multi_modal_rag"]["model"] == "m"


@pytest.mark.parametrize("reason, waited", [(WRITE_API, True), (ADDING_WRITE, True), (FLOOD, False), (READ_ONLY, False),
                                            (CLUSTER_READ_ONLY, False), (WRITE_API[:-2] + ", " + FLOOD.split("[", 2)[2], False)])
def test_only_the_migrations_write_block_is_waited_for(reason, waited):
    assert store.is_migration_block(_block(reason)) is waited
    assert store.is_migration_block({"type": "mapper_parsing_exception", "reason": "index write (api)"}) is False
    failure = store.item_reason({"_id": "x", "status": 403, "error": _block(reason)})
    if not waited:
        assert failure.startswith("refused by a block other than a migration's hand-over, not retried")
    assert store.blocks_of(_block(FLOOD)) == ["disk usage exceeded flood-stage watermark, index has read-only-allow-delete block"]


def test_a_write_to_a_deleted_version_brings_it_back_write_blocked_and_marked(client, index_name):
    store.guard_versions(client, index_name)
    store.guard_versions(client, index_name)  # idempotent
    stale = f"{index_name}-v7"
    response = client.bulk(body=[{"index": {"_index": stale, "_id": "x"}}, {"title": "late"}])
    error = response["items"][0]["index"]["error"]
    assert error["type"] == "cluster_block_exception" and store.is_migration_block(error)
    assert store.is_orphan(client, stale) and store.write_blocked(client, stale)
    assert client.count(index=stale)["count"] == 0
    # A delete never creates an index.
    response = client.bulk(body=[{"delete": {"_index": f"{index_name}-v8", "_id": "x"}}])
    assert response["items"][0]["delete"]["error"]["type"] == "index_not_found_exception"
    assert not client.indices.exists(index=f"{index_name}-v8")
    # Ours take writes.
    store.create_index(client, f"{index_name}-v9", store.IndexSpec(model="m", dimension=4))
    assert not store.write_blocked(client, f"{index_name}-v9") and not store.is_orphan(client, f"{index_name}-v9")


def _hold_first(gate: threading.Event, held: threading.Event, func, when=lambda *a, **k: True):
    """`func`, except that its first call matching `when` waits for `gate` (and says so through `held`)."""
    def wrapper(*args, **kwargs):
        if not held.is_set() and when(*args, **kwargs):
            held.set()
            assert gate.wait(300)
        return func(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("hold", ["embed", "bulk"])
def test_cleanup_while_a_writer_holds_a_stale_binding(hold, rotated, settings, client, index_name, sample_path, monkeypatch):
    """`embed`: the writer finds the alias moved after embedding. `bulk`: it already sent to the deleted index
    (re-created by the bulk, under the guard: write-blocked), is refused and moves on to the live index."""
    initial, late = _papers(sample_path, 16), _papers(sample_path, 1, skip=16)[0]
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(initial).created == 16
    app = OpenSearchManager(alias=index_name, settings=settings)  # follows the index's model
    app.binding.ensure_index()
    held, gate = threading.Event(), threading.Event()
    if hold == "embed":
        monkeypatch.setattr(writer_module, "embed_papers", _hold_first(gate, held, writer_module.embed_papers))
    else:
        bound_to_old = lambda client, actions, **kw: actions[0]["_index"] == f"{index_name}-v1"  # noqa: E731
        monkeypatch.setattr(store, "streaming_bulk", _hold_first(gate, held, store.streaming_bulk, bound_to_old))
    outcome = {}
    writer = threading.Thread(target=lambda: outcome.update(summary=app.index_all([late])))
    writer.start()
    try:
        assert held.wait(120)
        migration.Migrator(index_name, rotated, settings=settings, page_size=8).run()
        assert migration.cleanup(client, index_name) == [f"{index_name}-v1"]
    finally:
        gate.set()
        writer.join(300)
    summary = outcome["summary"]
    assert (summary.created, summary.failed) == (1, 0), summary.failures
    history = History(expected={p.doc_id(): p.content_hash() for p in initial + [late]})
    history.check(client, index_name)  # in v2, with the rotated model's vectors
    assert app.binding.index == f"{index_name}-v2" and app.binding.model_name == canonical_name(rotated)
    old = f"{index_name}-v1"
    if hold == "embed":
        assert not client.indices.exists(index=old)
    else:  # the stale bulk brought it back, born blocked: it holds nothing
        assert store.is_orphan(client, old) and client.count(index=old)["count"] == 0


def test_a_delete_after_cleanup_through_writers_bound_before_the_migration(rotated, settings, client, index_name,
                                                                          sample_path, monkeypatch):
    initial = _papers(sample_path, 12)
    owner = OpenSearchManager(alias=index_name, model="minilm", settings=settings)  # bound to minilm for good
    assert owner.index_all(initial).created == 12
    app = OpenSearchManager(alias=index_name, settings=settings)
    app.binding.ensure_index()
    migration.Migrator(index_name, rotated, settings=settings, page_size=8).run()
    migration.cleanup(client, index_name)

    assert app.delete([initial[0].doc_id()]) == 1
    assert owner.delete([initial[1].doc_id()]) == 1  # a delete carries no vectors: another model's writer may delete
    # The alias moved between resolving it and sending: the delete reaches the deleted index, and follows the alias.
    resolve, stale = store.resolve_alias, iter([f"{index_name}-v1"])
    monkeypatch.setattr(store, "resolve_alias", lambda client, alias: next(stale, None) or resolve(client, alias))
    assert app.delete([initial[2].doc_id(), "never-there"]) == 1
    monkeypatch.undo()
    assert app.delete([initial[2].doc_id()]) == 0
    history = History(expected={p.doc_id(): p.content_hash() for p in initial})
    history.expected.update({p.doc_id(): None for p in initial[:3]})
    history.check(client, index_name)
    assert not client.indices.exists(index=f"{index_name}-v1")


@pytest.mark.parametrize("block", ["read_only_allow_delete", "read_only"])
def test_another_block_fails_the_papers_at_once_with_its_reason(block, settings, client, index_name, sample_path):
    initial, more = _papers(sample_path, 6), _papers(sample_path, 4, skip=6)
    app = OpenSearchManager(alias=index_name, model="minilm", settings=settings, batch_size=2)
    assert app.index_all(initial).created == 6
    index = f"{index_name}-v1"
    client.indices.put_settings(index=index, body={"index": {"blocks": {block: True}}})
    try:
        summary = app.index_all(more, refresh=False)
        with pytest.raises(OpenSearchRequestError, match="block other than a migration's"):
            app.delete([initial[0].doc_id()])
    finally:
        client.indices.put_settings(index=index, body={"index": {"blocks": {block: None}}})
    assert (summary.created, summary.failed) == (0, 4)
    expected = "disk usage exceeded flood-stage watermark" if block == "read_only_allow_delete" else "index read-only (api)"
    for failure in summary.failures:
        assert "block other than a migration's hand-over" in failure.reason and expected in failure.reason
    assert app.count() == 6


def test_a_migration_block_that_never_lifts_fails_the_papers_after_block_wait(settings, client, index_name, sample_path):
    initial, more = _papers(sample_path, 4), _papers(sample_path, 3, skip=4)
    app = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    assert app.index_all(initial).created == 4
    app.writer.block_wait = 1.0
    store.set_write_block(client, f"{index_name}-v1", True)
    summary = app.index_all(more, refresh=False)
    assert summary.failed == 3 and "refused writes for over 1 s" in summary.failures[0].reason
