"""Fusion recipes: the record and its file, the pipelines, and the client-side fusion checked against the real node."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

import pytest

from multi_modal_rag.cli import run
from multi_modal_rag.connection import ConnectionSettings
from multi_modal_rag.errors import InputError
from multi_modal_rag.evaluation import load_queries
from multi_modal_rag.search.queries import HybridSettings, hybrid_pipeline, rrf_pipeline, search_body
from multi_modal_rag.search.recipes import Recipe, fuse, load_recipe, recipe_grid, save_recipe, score_recipes
from multi_modal_rag.serve.config import ServeConfig

BEIR_MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"

# ---- the record, its file, the pipelines (no node) ----------------------------------------


def test_every_grid_recipe_round_trips_and_has_a_pipeline_of_its_own(tmp_path):
    grid = recipe_grid()
    assert len(grid) == 2 * 3 * 9 + 9
    names = set()
    for recipe in grid:
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
        names.add(recipe.settings().pipeline_name(recipe.mode))
    assert len(names) == len(grid)
    tuned = Recipe("hybrid", "l2", "harmonic_mean", 0.3, 0.7, tuned_on={"dataset": "x", "split": "train", "NDCG@10": 0.5})
    loaded = load_recipe(save_recipe(tuned, tmp_path / "sub" / "recipe.json"))
    assert loaded == tuned and loaded.tuned_on == tuned.tuned_on


def test_pipelines_carry_every_parameter_as_the_node_reads_it():
    settings = Recipe("hybrid", "l2", "geometric_mean", 1.0, 3.0).settings()
    proc = hybrid_pipeline(settings)["phase_results_processors"][0]["normalization-processor"]
    assert proc == {"normalization": {"technique": "l2"},
                    "combination": {"technique": "geometric_mean", "parameters": {"weights": [0.25, 0.75]}}}
    assert settings.pipeline_name("hybrid") == "mmrag-hybrid-l2-geometric_mean-0.25-0.75"
    # 2.19 takes the rank constant from combination.parameters only (one beside "technique" is ignored)
    rrf = rrf_pipeline(HybridSettings(rank_constant=7))["phase_results_processors"][0]["score-ranker-processor"]
    assert rrf == {"combination": {"technique": "rrf", "parameters": {"rank_constant": 7}}}
    with pytest.raises(InputError, match="not both 0"):
        HybridSettings(bm25_weight=0, knn_weight=0).weights()
    body = search_body("hybrid", "q", [0.1, 0.2], 5)
    assert body["query"]["hybrid"]["pagination_depth"] == 100
    assert "pagination_depth" not in search_body("hybrid", "q", [0.1], 5, pagination_depth=False)["query"]["hybrid"]


@pytest.mark.parametrize("content, field", [
    ("{not json", ":1: malformed JSON"),
    ('["hybrid"]', "expected a JSON object"),
    ('{"normalization": "min_max"}', "field 'mode': missing"),
    ('{"mode": "linear"}', "field 'mode': unknown 'linear'"),
    ('{"mode": "hybrid", "normalization": "z_score"}', "field 'normalization': unknown 'z_score'"),
    ('{"mode": "hybrid", "combination": "max"}', "field 'combination': unknown 'max'"),
    ('{"mode": "hybrid", "weights": {"bm25": 0, "knn": 1}}', "field 'weights.bm25': 0 is not a positive number"),
    ('{"mode": "hybrid", "weights": {"bm25": 0.5, "knn": -1}}', "field 'weights.knn': -1"),
    ('{"mode": "hybrid", "weights": {"bm25": 0.5}}', "field 'weights': expected"),
    ('{"mode": "rrf", "rank_constant": 0}', "field 'rank_constant': 0 is not a whole number"),
    ('{"mode": "rrf", "rank_constant": 2.5}', "field 'rank_constant'"),
])
def test_a_bad_recipe_file_is_one_line_naming_file_and_field(tmp_path, content, field):
    path = tmp_path / "recipe.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message and field in message and "\n" not in message


def test_a_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"recipe file .*nowhere\.json: No such file"):
        load_recipe(tmp_path / "nowhere.json")


def test_serve_config_carries_the_recipe_to_its_workers(tmp_path, monkeypatch):
    path = save_recipe(Recipe("rrf", rank_constant=20), tmp_path / "r.json")
    config = ServeConfig(recipe=str(path))
    assert config.hybrid_settings().rank_constant == 20
    monkeypatch.setenv("MMRAG_SERVE_CONFIG", config.to_env())
    assert ServeConfig.from_env().hybrid_settings() == config.hybrid_settings()
    assert ServeConfig().hybrid_settings() == HybridSettings()


# ---- client-side fusion: neural-search 2.19's rules (no node) ---------------------------------


BM25 = [("a", 9.0), ("b", 5.0), ("c", 1.0)]
KNN = [("b", 0.8), ("d", 0.6)]


def _scores(recipe: Recipe) -> dict[str, float]:
    return dict(fuse(BM25, KNN, recipe, size=10))


def test_min_max_floors_the_lowest_at_0_001_and_arithmetic_mean_counts_a_missing_score():
    scores = _scores(Recipe("hybrid", "min_max", "arithmetic_mean", 0.25, 0.75))
    # bm25: a 1, b 0.5, c 0 -> 0.001; knn: b 1, d 0 -> 0.001; a paper missing from a list scores 0 there
    assert scores["a"] == pytest.approx(0.25 * 1.0)
    assert scores["b"] == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)
    assert scores["c"] == pytest.approx(0.25 * 0.001)
    assert scores["d"] == pytest.approx(0.75 * 0.001)


def test_geometric_and_harmonic_means_skip_a_missing_score():
    geometric = _scores(Recipe("hybrid", "min_max", "geometric_mean", 0.25, 0.75))
    harmonic = _scores(Recipe("hybrid", "min_max", "harmonic_mean", 0.25, 0.75))
    assert geometric["a"] == pytest.approx(1.0) and harmonic["a"] == pytest.approx(1.0)  # only in BM25: its own score
    assert geometric["b"] == pytest.approx(math.exp(0.25 * math.log(0.5) + 0.75 * math.log(1.0)))
    assert harmonic["b"] == pytest.approx(1.0 / (0.25 / 0.5 + 0.75 / 1.0))


def test_l2_and_equal_scores_and_rrf():
    l2 = _scores(Recipe("hybrid", "l2", "arithmetic_mean", 0.5, 0.5))
    assert l2["a"] == pytest.approx(0.5 * 9 / math.sqrt(81 + 25 + 1))
    same = dict(fuse([("x", 2.0), ("y", 2.0)], [], Recipe("hybrid", "min_max", "arithmetic_mean", 0.5, 0.5)))
    assert same == {"x": pytest.approx(0.5), "y": pytest.approx(0.5)}  # all equal: each 1.0 before weighting
    rrf = _scores(Recipe("rrf", rank_constant=1))
    assert rrf == {"b": pytest.approx(1 / 3 + 1 / 2), "a": pytest.approx(1 / 2), "d": pytest.approx(1 / 3),
                   "c": pytest.approx(1 / 4)}
    assert list(rrf) == ["b", "a", "d", "c"]


def test_score_recipes_ranks_by_ndcg_on_the_judged_queries():
    candidates = {"q1": (BM25, KNN)}
    ranked = score_recipes(candidates, {"q1": {"d": 1}}, [Recipe("hybrid", "min_max", "arithmetic_mean", 0.9, 0.1),
                                                          Recipe("rrf", rank_constant=60)], size=10)
    assert ranked[0].recipe.mode == "rrf"  # rrf puts d third, the 0.9 BM25 weighting puts it last
    assert ranked[0].metrics["NDCG@10"] > ranked[1].metrics["NDCG@10"]


# ---- against the real node ------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_alias(client, opensearch_url):
    """beir_mini indexed once for this module (52 SciFact papers, minilm)."""
    from multi_modal_rag.documents import read_papers
    from multi_modal_rag.manager import OpenSearchManager

    name = f"test-fusion-{uuid.uuid4().hex[:8]}"
    manager = OpenSearchManager(name, "minilm", settings=ConnectionSettings(url=opensearch_url))
    for _ in manager.index_documents(read_papers(BEIR_MINI, "beir")):
        pass
    manager.refresh()
    yield name, manager
    # the pipelines stay: other searchers of this node may be using the same names
    client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)


def _assert_same_ranking(node: list[tuple[str, float]], client_side: list[tuple[str, float]], where: str) -> None:
    """Same ids in the same order, except that papers of (nearly) equal score may come in either order."""
    for rank, (doc, score) in enumerate(node):
        assert client_side[rank][1] == pytest.approx(score, abs=1e-5), f"{where}: score at rank {rank + 1}"
        if doc != client_side[rank][0]:
            tied = {d for d, s in client_side if abs(s - score) <= 1e-6}
            assert doc in tied, f"{where}: rank {rank + 1} is {doc} on the node, {client_side[rank][0]} client-side"


RECIPES = [
    Recipe("hybrid", "min_max", "arithmetic_mean", 0.5, 0.5),
    Recipe("hybrid", "min_max", "geometric_mean", 0.3, 0.7),
    Recipe("hybrid", "min_max", "harmonic_mean", 0.8, 0.2),
    Recipe("hybrid", "l2", "arithmetic_mean", 0.2, 0.8),
    Recipe("hybrid", "l2", "geometric_mean", 0.6, 0.4),
    Recipe("hybrid", "l2", "harmonic_mean", 0.4, 0.6),
    Recipe("rrf", rank_constant=1),
    Recipe("rrf", rank_constant=60),
]


def test_client_side_fusion_gives_the_nodes_top_10(mini_alias):
    from multi_modal_rag.search.recipes import fetch_candidates

    _, manager = mini_alias
    queries = load_queries(BEIR_MINI)
    candidates = fetch_candidates(manager.searcher, queries, size=100, batch=5)
    assert all(len(bm25) > 0 and len(knn) > 0 for bm25, knn in candidates.values())
    for recipe in RECIPES:
        for query_id, text in queries.items():
            hits = manager.search(text, mode=recipe.mode, size=10, hybrid=recipe.settings(), passages=0)
            assert len(hits) == 10
            client_side = fuse(*candidates[query_id], recipe, size=100)
            _assert_same_ranking([(h.id, h.score) for h in hits], client_side, f"{recipe.label()}, query {query_id}")


def test_the_fused_top_does_not_depend_on_size(mini_alias):
    _, manager = mini_alias
    settings = Recipe("hybrid", "min_max", "arithmetic_mean", 0.5, 0.5).settings()
    text = next(iter(load_queries(BEIR_MINI).values()))
    top3 = manager.search(text, mode="hybrid", size=3, hybrid=settings, passages=0)
    top10 = manager.search(text, mode="hybrid", size=10, hybrid=settings, passages=0)
    assert [(h.id, h.score) for h in top3] == [(h.id, h.score) for h in top10[:3]]


def _json_run(capsys, argv):
    code = run(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_eval_tune_writes_a_recipe_that_eval_search_and_the_node_reproduce(mini_alias, settings, tmp_path, capsys):
    name, _ = mini_alias
    beir = tmp_path / "mini"
    (beir / "qrels").mkdir(parents=True)
    for part in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(BEIR_MINI / part, beir / part)
    shutil.copy(BEIR_MINI / "qrels" / "test.tsv", beir / "qrels" / "train.tsv")  # a train split of our own
    base = ["eval", str(beir), "--index", name, "--url", settings.url]

    assert run([*base, "--split", "test", "--tune"]) == 1
    assert "tune on train or dev" in capsys.readouterr().err

    out = tmp_path / "recipe.json"
    report = _json_run(capsys, [*base, "--split", "train", "--tune", "--recipe-out", str(out), "--top", "3", "--json"])
    assert report["recipe_out"] == str(out) and len(report["top"]) == 3
    best = load_recipe(out)
    assert best.to_dict() == report["best"]
    assert best.tuned_on["split"] == "train" and best.tuned_on["queries"] == 14 and best.tuned_on["dataset"] == "mini"
    top = [t["metrics"]["NDCG@10"] for t in report["top"]]
    assert top == sorted(top, reverse=True) and best.tuned_on["NDCG@10"] == top[0] >= report["default"]["metrics"]["NDCG@10"]

    # the node, through the recipe's pipeline, scores what the client-side fusion scored
    scored = _json_run(capsys, [*base, "--split", "train", "--recipe", str(out), "--json"])
    assert list(scored) == [best.mode]
    assert scored[best.mode]["NDCG@10"] == pytest.approx(top[0], abs=0.005)

    hits = _json_run(capsys, ["search", "vitamin D and bone density", "--index", name, "--recipe", str(out),
                              "--url", settings.url, "--json"])
    assert len(hits) == 10

    bad = tmp_path / "bad.json"
    bad.write_text('{"mode": "hybrid", "combination": "median"}', encoding="utf-8")
    assert run(["search", "q", "--index", name, "--recipe", str(bad), "--url", settings.url]) == 1
    err = capsys.readouterr().err.strip()
    assert "bad.json" in err and "'combination'" in err and len(err.splitlines()) == 1
