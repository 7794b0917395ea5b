"""Zero-downtime migration against the real node with real models."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from multi_modal_rag import migration, store
from multi_modal_rag.cli import run as cli_run
from multi_modal_rag.documents import SOURCE_FIELDS, Paper, read_papers
from multi_modal_rag.errors import IndexNotFoundError, MigrationError, ModelNotAvailableError
from multi_modal_rag import OpenSearchManager
from multi_modal_rag.models import model_path


class Interrupt(Exception):
    """Stands for Ctrl-C or a crash in the middle of a run."""


@pytest.fixture
def source(settings, index_name, sample_path) -> OpenSearchManager:
    manager = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    papers = itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), 40)
    summary = manager.index_all(papers)
    assert summary.created == 40
    return manager


def _ids(client, index: str) -> list[str]:
    body = {"size": 1000, "_source": False, "sort": [{"paper_id": "asc"}]}
    return [h["_id"] for h in client.search(index=index, body=body)["hits"]["hits"]]


def _alias_target(client, alias: str) -> list[str]:
    return list(client.indices.get_alias(name=alias))


def test_minilm_to_mpnet_and_back(source, settings, client):
    alias = source.alias
    before = source.status()
    errors: list[str] = []
    searches = 0
    done = threading.Event()
    reader = OpenSearchManager(alias=alias, settings=settings)  # follows the index's model, like the app

    def search_all_the_time() -> None:
        nonlocal searches
        while not done.is_set():
            for mode in ("bm25", "hybrid"):
                try:
                    if not reader.search("cancer cell growth", mode=mode, size=5):
                        errors.append(f"{mode}: no results")
                except Exception as exc:  # any failure is downtime
                    errors.append(f"{mode}: {exc}")
                searches += 1

    thread = threading.Thread(target=search_all_the_time)
    thread.start()
    migrator = migration.Migrator(alias, "mpnet", settings=settings)
    try:
        state = migrator.run()
    finally:
        done.set()
        thread.join()
    assert errors == [] and searches > 5
    assert state.status == "swapped" and state.target_index == f"{alias}-v2"
    assert _alias_target(client, alias) == [f"{alias}-v2"]
    after = OpenSearchManager(alias=alias, settings=settings).status()
    assert (after.model, after.dimension) == ("sentence-transformers/all-mpnet-base-v2", 768)
    # Token windows follow each model's tokenizer and input length: mpnet's chunks are its own.
    papers = [Paper.from_source(h["_source"]) for h in
              client.search(index=f"{alias}-v1", body={"size": 1000, "_source": SOURCE_FIELDS})["hits"]["hits"]]
    expected = sum(len(migrator.encoder.chunk(p, store.spec_of(client, f"{alias}-v2"))) for p in papers)
    assert (after.documents, after.chunks) == (before.documents, expected)
    assert _ids(client, f"{alias}-v1") == _ids(client, f"{alias}-v2")
    hit = client.search(index=alias, body={"size": 1, "_source": ["embedding"]})["hits"]["hits"][0]
    assert len(hit["_source"]["embedding"]) == 768
    assert abs(np.linalg.norm(hit["_source"]["embedding"]) - 1) < 1e-3
    assert client.indices.exists(index=f"{alias}-v1")  # kept until cleanup

    assert migration.cleanup(client, alias) == [f"{alias}-v1"]
    back = migration.Migrator(alias, "minilm", settings=settings).run()
    assert back.target_index == f"{alias}-v3"
    final = OpenSearchManager(alias=alias, settings=settings).status()
    assert (final.dimension, final.documents, final.chunks) == (384, before.documents, before.chunks)


def test_interrupted_run_resumes_without_loss_or_duplicates(source, settings, client):
    alias, to_model = source.alias, model_path("minilm")
    pages = 0

    def crash_after_two_pages(phase, done, total):
        nonlocal pages
        if phase == "copy":
            pages += 1
            if pages == 2:
                raise Interrupt()

    with pytest.raises(Interrupt):
        migration.Migrator(alias, to_model, settings=settings, page_size=8, on_progress=crash_after_two_pages).run()
    state = migration.load_state(client, alias)
    assert (state.status, state.copied) == ("copying", 16)
    assert _alias_target(client, alias) == [f"{alias}-v1"]
    with pytest.raises(MigrationError, match="--resume"):
        migration.Migrator(alias, to_model, settings=settings).run()

    resumed = migration.Migrator(alias, to_model, settings=settings, page_size=8).run(resume=True)
    assert resumed.status == "swapped" and resumed.copied == 40
    assert _ids(client, f"{alias}-v2") == _ids(client, f"{alias}-v1")
    assert OpenSearchManager(alias=alias, settings=settings).count() == 40


def test_writes_during_the_migration_are_caught_up(source, settings, client):
    alias = source.alias
    victim = _ids(client, alias)[-1]
    writer = OpenSearchManager(alias=alias, model="minilm", settings=settings)
    wrote = False

    def write_while_copying(phase, done, total):
        nonlocal wrote
        if phase == "copy" and not wrote:
            wrote = True
            writer.index_all([Paper(id="zz-new", title="Written during the migration", abstract="Fresh paper.")])
            writer.delete([victim])

    migration.Migrator(alias, model_path("minilm"), settings=settings, page_size=8, on_progress=write_while_copying).run()
    ids = _ids(client, f"{alias}-v2")
    assert "zz-new" in ids and victim not in ids
    assert ids == _ids(client, f"{alias}-v1")


def test_failed_verification_leaves_the_alias_in_place(source, settings, client):
    alias = source.alias

    def lose_a_document_after_reconciling(step):
        if step == "reconciled":  # a paper lost after the last repair: only verification can catch it
            target = f"{alias}-v2"
            client.delete(index=target, id=_ids(client, target)[0], refresh=True)

    with pytest.raises(MigrationError, match="Verification failed, alias .* not moved: document count differs"):
        migration.Migrator(alias, model_path("minilm"), settings=settings, on_step=lose_a_document_after_reconciling).run()
    assert _alias_target(client, alias) == [f"{alias}-v1"]
    assert migration.load_state(client, alias).status == "failed"
    assert not store.write_blocked(client, f"{alias}-v1")  # the app writes again
    resumed = migration.Migrator(alias, model_path("minilm"), settings=settings).run(resume=True)  # repairs it
    assert resumed.status == "swapped" and _alias_target(client, alias) == [f"{alias}-v2"]


def test_a_lost_paper_is_repaired_before_the_swap(source, settings, client):
    alias = source.alias

    def lose_a_document(phase, done, total):
        if phase == "catch-up":
            target = f"{alias}-v2"
            client.delete(index=target, id=_ids(client, target)[0], refresh=True)

    state = migration.Migrator(alias, model_path("minilm"), settings=settings, on_progress=lose_a_document).run()
    assert state.status == "swapped" and state.verification["ok"]
    assert _ids(client, f"{alias}-v2") == _ids(client, f"{alias}-v1")


def test_rollback_points_the_alias_back(source, settings, client):
    alias = source.alias
    migration.Migrator(alias, model_path("minilm"), settings=settings).run()
    assert _alias_target(client, alias) == [f"{alias}-v2"]
    migration.rollback(client, alias)
    assert _alias_target(client, alias) == [f"{alias}-v1"]
    assert migration.cleanup(client, alias) == [f"{alias}-v2"]


def test_refusals_leave_everything_as_it_was(source, settings, client, tmp_path):
    alias = source.alias
    with pytest.raises(ModelNotAvailableError):
        migration.Migrator(alias, str(tmp_path / "no-model"), settings=settings).run()
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        migration.Migrator(f"{alias}-nothing", "minilm", settings=settings).run()
    client.indices.create(index=f"{alias}-v2")
    with pytest.raises(MigrationError, match="already exists"):
        migration.Migrator(alias, model_path("minilm"), settings=settings).run()
    client.indices.create(index=f"{alias}-other")
    client.indices.put_alias(index=f"{alias}-other", name=alias)
    with pytest.raises(MigrationError, match="points at 2 indices"):
        migration.Migrator(alias, model_path("minilm"), settings=settings).run()
    assert sorted(_alias_target(client, alias)) == [f"{alias}-other", f"{alias}-v1"]
    assert migration.load_state(client, alias) is None


def test_cli_dry_run_prints_the_plan(source, settings, capsys):
    code = cli_run(["migrate", "--index", source.alias, "--to-model", "mpnet", "--dry-run", "--json", "--url", settings.url])
    assert code == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert (plan["source_index"], plan["target_index"]) == (f"{source.alias}-v1", f"{source.alias}-v2")
    assert (plan["source_dimension"], plan["target_dimension"], plan["documents"]) == (384, 768, 40)
    assert plan["estimated_seconds"] > 0
