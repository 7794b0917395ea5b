"""Canary queries of a migration: near-duplicate titles do not fail a correct index, another model's vectors do
fail, and `mmrag migrate --resume` continues with the recorded run's model. Real node, real models."""

from __future__ import annotations

import itertools
import random

import pytest

from cli_output import json_out
from multi_modal_rag import OpenSearchManager, Paper, migration, read_papers, store
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.migration.canaries import CANARY_QUERIES, run_canaries
from multi_modal_rag.models import canonical_name
from multi_modal_rag.search.queries import knn_query


@pytest.fixture(scope="session")
def rotated(tmp_path_factory) -> str:
    return rotated_copy("minilm", tmp_path_factory.mktemp("models") / "minilm-rotated")


def _papers(sample_path, n: int) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), n))


def _near_duplicates(sample_path, n: int = 300) -> list[Paper]:
    """`n` papers, 60% of them titled "Live paper N R" (real abstracts): titles a kNN query cannot tell apart."""
    rng = random.Random(3)
    return [Paper(**{**p.__dict__, "title": f"Live paper {i} {rng.random():.4f}"}) if i % 5 < 3 else p
            for i, p in enumerate(_papers(sample_path, n))]


def _finds_itself(client, index: str, encoder: Encoder, papers: list[Paper]) -> list[bool]:
    vectors = encoder.encode_queries([p.title for p in papers])
    found = [client.search(index=index, body={"size": 10, "_source": False, "query": knn_query(v, 10)})["hits"]["hits"]
             for v in vectors]
    return [p.doc_id() in [h["_id"] for h in hits] for p, hits in zip(papers, found)]


def test_near_duplicate_titles_do_not_fail_a_correct_migration(rotated, settings, client, index_name, sample_path):
    papers = _near_duplicates(sample_path)
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(papers).created == 300
    client.indices.refresh(index=index_name)
    # The index reproduces the hazard: most near-duplicate titles do not find their own paper in the top 10.
    duplicates = [p for p in papers if p.title.startswith("Live paper")][:20]
    assert sum(_finds_itself(client, index_name, Encoder("minilm"), duplicates)) < 10

    state = migration.Migrator(index_name, rotated, settings=settings, page_size=64).run()

    assert state.status == "swapped", state.message
    assert store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    report = state.verification
    assert report["canaries_run"] == report["canaries_ok"] == CANARY_QUERIES, report
    assert not report["problems"] and not report["notes"], report


def test_another_models_vectors_fail_the_canaries(rotated, settings, client, index_name, sample_path):
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(_papers(sample_path, 100)).created == 100
    index = f"{index_name}-v1"
    client.indices.refresh(index=index)

    right = run_canaries(client, index, Encoder("minilm"))
    assert right.run == right.ok == CANARY_QUERIES and not right.problems

    # MiniLM vectors searched with the rotated model's queries: what a target filled by the wrong model looks like.
    wrong_encoder = Encoder(rotated)
    wrong = run_canaries(client, index, wrong_encoder)
    assert wrong.run == CANARY_QUERIES and wrong.ok < wrong.run, wrong  # one failure is enough to refuse the index
    assert all("did not find its paper" in p for p in wrong.problems)
    spec = store.spec_of(client, index)
    checked = migration.check_target(client, index, wrong_encoder, spec)
    assert checked.vectors_checked > 0 and checked.canaries_run == CANARY_QUERIES
    assert any("did not find its paper" in p for p in checked.problems)


def test_titles_shared_or_too_short_make_fewer_canaries_and_a_note(settings, client, index_name, sample_path):
    generic = [Paper(**{**p.__dict__, "title": title})
               for p, title in zip(_papers(sample_path, 12), itertools.cycle(["Erratum", "Editorial", "Summary 2019"]))]
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(generic).created == 12
    client.indices.refresh(index=index_name)

    result = run_canaries(client, f"{index_name}-v1", Encoder("minilm"))

    assert result.run == result.ok == 0 and not result.problems
    assert "0 canary queries" in result.notes[0] and "distinctive" in result.notes[0]


def test_cli_resume_takes_the_model_of_the_interrupted_run(rotated, settings, client, index_name, sample_path, capsys):
    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(_papers(sample_path, 24)).created == 24

    class Crash(Exception):
        pass

    def crash(step: str) -> None:
        if step == "page-copied":
            raise Crash(step)

    with pytest.raises(Crash):
        migration.Migrator(index_name, rotated, settings=settings, page_size=8, on_step=crash).run()
    assert migration.load_state(client, index_name).status == "copying"

    state = json_out(capsys, ["migrate", "--index", index_name, "--resume", "--json", "--url", settings.url])

    assert state["status"] == "swapped" and state["to_model"] == canonical_name(rotated)
    assert store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    assert store.spec_of(client, f"{index_name}-v2").model == canonical_name(rotated)


def test_cli_resume_with_another_model_is_refused(rotated, settings, client, index_name, sample_path, capsys):
    from multi_modal_rag.cli import run

    assert OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(_papers(sample_path, 8)).created == 8
    assert run(["migrate", "--index", index_name, "--resume", "--url", settings.url]) == 1
    assert f"No interrupted migration of {index_name!r} to resume" in capsys.readouterr().err

    def crash(step: str) -> None:
        if step == "page-copied":
            raise RuntimeError(step)

    with pytest.raises(RuntimeError):
        migration.Migrator(index_name, rotated, settings=settings, page_size=4, on_step=crash).run()
    assert run(["migrate", "--index", index_name, "--resume", "--to-model", "mpnet", "--url", settings.url]) == 1
    assert f"is to {canonical_name(rotated)}, not" in capsys.readouterr().err
