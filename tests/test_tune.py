"""`mmrag tune`: training rows built from judgments and BM25 hard negatives, and a real (short) fine-tuning run
against the real node with the real minilm, whose folder then loads and indexes like any model."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from cli_output import json_out
from multi_modal_rag.cli import run
from multi_modal_rag.documents import Paper
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.evaluation import load_qrels, load_queries
from multi_modal_rag.models import build_embedder
from multi_modal_rag.training_data import bm25_rankings, build_triples, fetch_texts, paper_text, split_held_out, truncate_texts
from multi_modal_rag.tuning import REPORT_FILE, TuneConfig, TuneReport

BEIR_MINI = Path(__file__).resolve().parent.parent / "data" / "beir_mini"


def _error(capsys, argv: list[str]) -> str:
    assert run(argv) == 1
    return capsys.readouterr().err


# ---- pure builders ---------------------------------------------------------------------------


def test_triples_take_non_relevant_bm25_hits_as_negatives_and_count_what_is_missing():
    queries = {"q1": "coral bleaching", "q2": "protein folding", "q3": "unjudged"}
    qrels = {"q1": {"d1": 1, "d2": 1, "d0": 0}, "q2": {"d3": 1, "gone": 1}, "q9": {"d1": 1}}
    texts = {d: f"text of {d}" for d in ("d0", "d1", "d2", "d3", "d4", "d5", "d6")}
    rankings = {"q1": ["d2", "d1", "d0", "missing", "d4", "d5"], "q2": ["d3", "d6"]}

    columns, counts = build_triples(queries, qrels, texts, rankings, hard_negatives=2)
    assert list(columns) == ["anchor", "positive", "negative_1", "negative_2"]
    # q1: two pairs; its judged-relevant d1, d2 are never negatives, a paper judged 0 (d0) may be, one without text not
    assert columns["anchor"] == ["coral bleaching", "coral bleaching"]
    assert columns["positive"] == ["text of d1", "text of d2"]
    assert columns["negative_1"] == ["text of d0"] * 2 and columns["negative_2"] == ["text of d4"] * 2
    # q2: "gone" is not in the index (counted); d3's pair has only one negative (d6) and is left out, counted
    assert counts == {"pairs": 2, "missing_docs": 1, "pairs_short_of_negatives": 1, "hard_negatives": 4, "pairs_capped": 0}

    columns, counts = build_triples(queries, qrels, texts, rankings, hard_negatives=1, skip_top=1)
    assert columns["negative_1"] == ["text of d4", "text of d4"]  # d0, the first, skipped
    assert (counts["pairs"], counts["pairs_short_of_negatives"]) == (2, 1)  # q2's only negative, d6, skipped
    columns, counts = build_triples(queries, qrels, texts, rankings, hard_negatives=0)
    assert list(columns) == ["anchor", "positive"] and counts["pairs"] == 3 and counts["hard_negatives"] == 0


def test_pairs_per_query_keeps_a_seeded_sample_of_each_querys_pairs():
    queries = {"many": "vitamin d", "few": "coral bleaching"}
    qrels = {"many": {f"d{i}": 1 for i in range(10)}, "few": {"d10": 1}}
    texts = {f"d{i}": f"text of d{i}" for i in range(11)}
    columns, counts = build_triples(queries, qrels, texts, {}, hard_negatives=0, pairs_per_query=3, seed=1)
    assert columns["anchor"].count("vitamin d") == 3 and columns["anchor"].count("coral bleaching") == 1
    assert counts["pairs"] == 4 and counts["pairs_capped"] == 7
    kept = columns["positive"][:3]
    assert build_triples(queries, qrels, texts, {}, hard_negatives=0, pairs_per_query=3, seed=1)[0]["positive"][:3] == kept
    assert any(build_triples(queries, qrels, texts, {}, hard_negatives=0, pairs_per_query=3, seed=s)[0]["positive"][:3] != kept
               for s in range(2, 6))
    assert build_triples(queries, qrels, texts, {}, hard_negatives=0)[1]["pairs"] == 11  # 0: every pair


def test_held_out_split_is_seeded_disjoint_and_keeps_at_least_one():
    ids = [f"q{i}" for i in range(20)]
    train, held = split_held_out(ids, 0.1, seed=7)
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == sorted(ids)
    assert split_held_out(list(reversed(ids)), 0.1, seed=7) == (train, held)  # the order given does not matter
    assert split_held_out(ids, 0.1, seed=8)[1] != held
    assert split_held_out(ids[:3], 0.1, seed=7)[1] and split_held_out(ids, 0.0, seed=7) == (sorted(ids), [])


def test_paper_text_is_what_the_indexer_embeds_and_is_cut_where_the_model_stops(minilm):
    paper = Paper(id="p", title="Coral reefs", abstract="Warming seas bleach corals.", content="More on reefs.")
    encoder = Encoder("minilm")
    [chunk] = encoder.chunk(paper, encoder.spec())
    assert paper_text(paper.to_source()) == chunk.embed_text
    assert paper_text({"title": "Only a title"}) == "Only a title"

    long_text = "word " * 1000
    short, cut = truncate_texts(["a short text", long_text], minilm.tokenizer, 256)
    assert short == "a short text"
    assert len(minilm.tokenizer(cut)["input_ids"]) <= 256 < len(minilm.tokenizer(long_text)["input_ids"])
    assert long_text.startswith(cut)


def test_config_and_report_round_trip_and_bad_options_are_refused():
    report = TuneReport(base="b", out="o", data="d", split="train", index="i", device="cpu",
                        config=TuneConfig(epochs=2), counts={"pairs": 3}, held_out={"base": {"NDCG@10": 0.5}})
    assert TuneReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    for bad, message in [({"held_out": 1.0}, "--held-out"), ({"batch_size": 1}, "--batch-size"),
                         ({"hard_negatives": -1}, "--hard-negatives"), ({"max_steps": 0}, "--max-steps"),
                         ({"pairs_per_query": -1}, "--pairs-per-query"), ({"loss": "triplet"}, "--loss"),
                         ({"guide": "mpnet"}, "--guide")]:
        with pytest.raises(ValueError, match=message):
            TuneConfig(**bad).validate()


# ---- against the real node ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_index(settings, client) -> Iterator[str]:
    """data/beir_mini indexed once for this module's tests (which only read it) into a fresh alias."""
    name = f"test-tune-{uuid.uuid4().hex[:8]}"
    assert run(["index", str(BEIR_MINI / "corpus.jsonl"), "--index", name, "--model", "minilm", "--json", "--url", settings.url]) == 0
    yield name
    client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)


def test_hard_negatives_mined_from_the_index_are_never_judged_relevant(client, mini_index):
    queries, qrels = load_queries(BEIR_MINI), load_qrels(BEIR_MINI, "test")
    rankings = bm25_rankings(client, mini_index, {q: queries[q] for q in qrels}, 10)
    assert len(rankings) == len(qrels) and all(1 <= len(ranked) <= 10 for ranked in rankings.values())
    texts = fetch_texts(client, mini_index, sorted({d for r in rankings.values() for d in r} | {d for j in qrels.values() for d in j}))
    assert all(d in texts for judged in qrels.values() for d in judged)  # the judged papers are in the index
    mined = 0
    for query_id in qrels:
        columns, counts = build_triples(queries, {query_id: qrels[query_id]}, texts, rankings, hard_negatives=2)
        assert counts["hard_negatives"] == 2 * counts["pairs"] and counts["missing_docs"] == 0
        relevant = {texts[d] for d in qrels[query_id]}
        assert not relevant & set(columns["negative_1"] + columns["negative_2"])
        assert set(columns["negative_1"]) <= {texts[d] for d in rankings[query_id][:3]}  # among the best hits
        mined += counts["hard_negatives"]
    assert mined >= len(qrels)


def test_tune_writes_a_model_folder_that_loads_differs_and_indexes(capsys, settings, client, mini_index, tmp_path):
    out = tmp_path / "tuned"
    url = ["--url", settings.url]
    argv = ["tune", "--base", "minilm", "--train", str(BEIR_MINI), "--split", "test", "--index", mini_index,
            "--out", str(out), "--max-steps", "3", "--batch-size", "4", "--held-out", "0.3", "--candidates", "5",
            "--skip-top", "1", "--json", *url]
    report = json_out(capsys, argv)
    counts = report["counts"]
    assert counts["hard_negatives"] > 0 and counts["pairs"] > 0 and counts["missing_docs"] == 0
    assert counts["held_out_queries"] >= 1 and counts["train_queries"] + counts["held_out_queries"] == 14
    assert report["steps"] == 3 and report["config"]["max_steps"] == 3 and report["config"]["skip_top"] == 1
    for which in ("base", "tuned"):
        assert set(report["held_out"][which]) == {"NDCG@10", "MRR@10", "Recall@100"}
        assert all(0.0 <= v <= 1.0 for v in report["held_out"][which].values())
    assert json.loads((out / REPORT_FILE).read_text()) == report

    tuned, base = Encoder(str(out)), Encoder("minilm")
    assert tuned.dimension == 384 and tuned.canonical_name == str(out)
    text = ["Vitamin D supplementation and bone density in older adults."]
    tuned_vector, base_vector = tuned.encode_queries(text)[0], base.encode_queries(text)[0]
    assert np.isclose(np.linalg.norm(tuned_vector), 1.0) and not np.allclose(tuned_vector, base_vector, atol=1e-4)

    papers = tmp_path / "five.jsonl"
    papers.write_text("".join((BEIR_MINI / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:5]))
    summary = json_out(capsys, ["index", str(papers), "--index", f"{mini_index}-tuned", "--model", str(out), "--json", *url])
    assert summary["created"] == 5 and summary["model"] == str(out)
    client.indices.delete(index=f"{mini_index}-tuned*")

    assert "not empty" in _error(capsys, argv)  # a second run does not overwrite it ...
    shutil.rmtree(out / "1_Pooling")
    again = json_out(capsys, [*argv[:-3], "--held-out", "0", "--max-steps", "2", "--overwrite", "--loss", "gist",
                               "--pairs-per-query", "1", "--json", *url])  # ... unless told; GIST with a guide trains too
    assert again["held_out"] == {} and (out / "1_Pooling").is_dir() and json.loads((out / REPORT_FILE).read_text()) == again
    assert again["config"]["loss"] == "gist" and again["counts"]["pairs"] <= again["counts"]["train_queries"]
    retuned = build_embedder(str(out), "cpu", "fp32").encode(text, normalize_embeddings=True)[0]  # not the cached first model
    assert not np.allclose(retuned, base_vector, atol=1e-4) and not np.allclose(retuned, tuned_vector, atol=1e-4)


def test_bad_input_gets_one_clear_line(capsys, settings, mini_index, tmp_path):
    base = ["tune", "--url", settings.url, "--out", str(tmp_path / "out")]
    assert "not a folder" in _error(capsys, [*base, "--train", str(tmp_path / "nowhere")])
    err = _error(capsys, [*base, "--train", str(BEIR_MINI), "--split", "train", "--index", mini_index])
    assert "qrels/train.tsv: not found; splits here: test" in err
    err = _error(capsys, [*base, "--train", str(BEIR_MINI), "--split", "test", "--index", "no-such-alias-here"])
    assert "--index no-such-alias-here: no such alias or index" in err

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    shutil.copy(BEIR_MINI / "queries.jsonl", beir / "queries.jsonl")
    query_id = json.loads((BEIR_MINI / "queries.jsonl").read_text().splitlines()[0])["_id"]
    (beir / "qrels" / "train.tsv").write_text(f"query-id\tcorpus-id\tscore\n{query_id}\tnot-in-the-index\t1\n")
    err = _error(capsys, [*base, "--train", str(beir), "--index", mini_index])
    assert "no usable training pairs" in err and "1 judged papers missing" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
