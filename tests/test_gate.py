"""The relevance gate on a real node: a worse model is refused (and can be forced or cleaned up), a better one
passes, the gate survives a crash and resume, and without judgments it reports overlap only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multi_modal_rag import OpenSearchManager, migration, store
from multi_modal_rag.cli import run as cli_run
from multi_modal_rag.devtools.rotated_model import noised_copy, rotated_copy
from multi_modal_rag.documents import Paper, read_papers
from multi_modal_rag.errors import InputError
from multi_modal_rag.migration import GateRefused, GateReport, GateSpec
from multi_modal_rag.migration.gate import decide, load_judgments
from multi_modal_rag.search.recipes import Recipe, save_recipe

MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"


class Interrupt(Exception):
    """Stands for a crash between two steps of the run."""


@pytest.fixture(scope="module")
def worse(tmp_path_factory) -> str:
    # Noise enough to rank worse (beir_mini kNN NDCG@10 about 0.92 against 0.97), not so much that the canaries of
    # the migration's own verification, titles that must find their paper, fail before the gate is reached.
    return noised_copy("minilm", tmp_path_factory.mktemp("models") / "minilm-noised", noise=0.25)


def _index_mini(settings, alias: str, model: str) -> OpenSearchManager:
    manager = OpenSearchManager(alias=alias, model=model, settings=settings)
    summary = manager.index_all(p for p in read_papers(MINI, "beir") if isinstance(p, Paper))
    assert summary.created == 52 and not summary.failed
    manager.refresh()
    return manager


def _gate(**options) -> GateSpec:
    return GateSpec(judgments=str(MINI), split="test", **{"mode": "knn", **options})


def test_a_worse_model_is_refused_then_forced_in(settings, client, index_name, worse, capsys):
    manager = _index_mini(settings, index_name, "minilm")
    with pytest.raises(GateRefused, match="relevance gate refused the swap"):
        migration.Migrator(index_name, worse, settings=settings, gate=_gate()).run()
    state = migration.load_state(client, index_name)
    assert state.status == "gated" and not state.gate["passed"]
    assert state.gate["change"] < -0.01
    assert state.gate["source"]["knn"]["NDCG@10"] > state.gate["target"]["knn"]["NDCG@10"]
    assert store.alias_indices(client, index_name) == [f"{index_name}-v1"]
    assert client.indices.exists(index=f"{index_name}-v2")  # left for inspection
    assert not store.write_blocked(client, f"{index_name}-v1")

    # The app keeps writing meanwhile; a new run is refused with what to do instead.
    late = Paper(id="written-after-the-gate", title="Coral bleaching and ocean warming", abstract="Reefs lose algae.")
    assert manager.index_all([late]).created == 1
    assert cli_run(["migrate", "--index", index_name, "--to-model", worse, "--url", settings.url]) == 1
    assert f"mmrag migrate swap --index {index_name} --force" in capsys.readouterr().err
    assert cli_run(["migrate", "swap", "--index", index_name, "--url", settings.url]) == 1
    assert "add --force" in capsys.readouterr().err

    assert cli_run(["migrate", "swap", "--index", index_name, "--force", "--json", "--url", settings.url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "swapped" and report["gate"]["forced"]
    assert store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    assert client.get(index=f"{index_name}-v2", id=late.id)["found"]  # caught up after the refusal


def test_a_better_model_passes_and_the_report_is_in_json(settings, client, index_name, worse, tmp_path, capsys):
    _index_mini(settings, index_name, worse)
    recipe = save_recipe(Recipe(normalization="l2", bm25_weight=0.3, knn_weight=0.7), tmp_path / "recipe.json")
    code = cli_run(["migrate", "--index", index_name, "--to-model", "minilm", "--gate", str(MINI), "--gate-mode", "knn",
                    "--gate-modes", "knn,hybrid,rrf", "--gate-recipe", str(recipe), "--json", "--url", settings.url])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    gate = report["gate"]
    assert gate["passed"] and gate["change"] > 0 and gate["queries"] == 14
    assert set(gate["source"]) == set(gate["target"]) == set(gate["overlap_at_10"]) == {"knn", "hybrid", "rrf"}
    assert gate["target"]["knn"]["NDCG@10"] > gate["source"]["knn"]["NDCG@10"] + 0.02
    assert set(gate["target"]["knn"]) == {"NDCG@10", "Recall@100"}
    assert store.alias_indices(client, index_name) == [f"{index_name}-v2"]
    assert migration.load_state(client, index_name).gate == gate  # saved in the state index
    assert gate["spec"]["recipe"] == str(recipe)


def test_the_gate_holds_across_a_crash_and_cleanup_drops_the_refused_index(settings, client, index_name, worse):
    _index_mini(settings, index_name, "minilm")

    def crash(step: str) -> None:
        if step == "caught-up":
            raise Interrupt(step)

    with pytest.raises(Interrupt):
        migration.Migrator(index_name, worse, settings=settings, gate=_gate(), on_step=crash).run()
    # Resumed without naming the gate: the one asked for at the start still decides.
    with pytest.raises(GateRefused):
        migration.Migrator(index_name, worse, settings=settings).run(resume=True)
    assert store.alias_indices(client, index_name) == [f"{index_name}-v1"]
    assert migration.cleanup(client, index_name) == [f"{index_name}-v2"]
    assert not client.indices.exists(index=f"{index_name}-v2")
    assert migration.load_state(client, index_name).status == "cleaned"
    assert store.alias_indices(client, index_name) == [f"{index_name}-v1"]


def test_without_judgments_titles_give_a_report_and_decide_nothing(settings, client, index_name, tmp_path, capsys):
    _index_mini(settings, index_name, "minilm")
    rotated = rotated_copy("minilm", tmp_path / "rotated")
    code = cli_run(["migrate", "--index", index_name, "--to-model", rotated, "--gate-titles", "20",
                    "--gate-modes", "knn", "--url", settings.url])
    out = capsys.readouterr().out
    assert code == 0 and "Relevance gate: 20 queries" in out and "report only" in out
    gate = migration.load_state(client, index_name).gate
    assert gate["passed"] and gate["queries"] == 20
    assert gate["overlap_at_10"]["knn"] > 0.9  # a rotation keeps every similarity
    assert gate["source"]["knn"]["Recall@100"] == 1.0  # each title finds its own paper


def _report(before: float, after: float) -> GateReport:
    return GateReport(spec={}, queries=3, source={m: {"NDCG@10": before} for m in ("knn", "hybrid")},
                      target={m: {"NDCG@10": after} for m in ("knn", "hybrid")})


def test_decide_refuses_only_a_drop_beyond_max_drop():
    spec = _gate(max_drop=0.02)
    assert decide(_report(0.70, 0.69), spec).passed
    assert decide(_report(0.70, 0.75), spec).passed
    refused = decide(_report(0.70, 0.67), spec)
    assert not refused.passed and refused.change == -0.03 and "more than --max-drop 0.02" in refused.reason
    assert decide(_report(0.70, 0.10), GateSpec(judgments=None)).passed  # titles: report only


def test_judgments_from_a_folder_or_a_qrels_file_and_bad_input(tmp_path):
    queries, qrels = load_judgments(MINI, "test")
    assert len(queries) == len(qrels) == 14
    assert load_judgments(MINI / "qrels" / "test.tsv", "ignored")[1] == qrels
    with pytest.raises(InputError, match="no such folder or qrels file"):
        load_judgments(tmp_path / "missing", "test")
    with pytest.raises(InputError, match="splits here: test"):
        load_judgments(MINI, "dev")
    lone = tmp_path / "lone.tsv"
    lone.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputError, match="no queries.jsonl"):
        load_judgments(lone, "test")
    with pytest.raises(InputError, match="unknown fast"):
        GateSpec(judgments=str(MINI), mode="fast")
    with pytest.raises(InputError, match="--max-drop"):
        GateSpec(judgments=str(MINI), max_drop=-0.1)
    assert GateSpec.from_dict(_gate(modes=("knn",)).to_dict()) == _gate(modes=("knn",))
    with pytest.raises(InputError, match="missing.json"):
        _gate(recipe=str(tmp_path / "missing.json")).check()


def test_gate_options_that_do_not_combine(capsys):
    assert cli_run(["migrate", "--index", "x", "--to-model", "minilm", "--gate", str(MINI), "--gate-titles", "5"]) == 1
    assert "go separately" in capsys.readouterr().err


def test_unusable_judgments_are_refused_before_anything_is_copied(settings, client, index_name, tmp_path):
    _index_mini(settings, index_name, "minilm")
    with pytest.raises(InputError, match="splits here: test"):
        migration.Migrator(index_name, "minilm", settings=settings, gate=GateSpec(judgments=str(MINI), split="dev")).run()
    assert migration.load_state(client, index_name) is None
    assert not client.indices.exists(index=f"{index_name}-v2")
