"""Request bodies, pipelines, index body and metrics: pure functions, no node needed."""

import json

import numpy as np
import pytest

from multi_modal_rag.cli import parse_filters
from multi_modal_rag.errors import MMRagError
from multi_modal_rag.evaluation import evaluate, ndcg_at_k
from multi_modal_rag.store.template import IndexSpec, build_index_body, next_version
from multi_modal_rag.search.queries import (
    HybridSettings,
    SearchFilters,
    clean_query,
    hybrid_pipeline,
    knn_query,
    reciprocal_rank_fusion,
    rrf_pipeline,
    search_body,
)

FILTERS = SearchFilters(year_from=2019, year_to=2021, categories=("cs.IR",), authors=("Jane Doe",), sources=("arXiv",))
VECTOR = [0.1, 0.2, 0.3]


def test_filters_become_term_and_range_clauses():
    clauses = FILTERS.clauses()
    assert {"range": {"year": {"gte": 2019, "lte": 2021}}} in clauses
    assert {"terms": {"categories": ["cs.ir"]}} in clauses
    assert {"terms": {"authors.keyword": ["jane doe"]}} in clauses
    assert {"terms": {"source": ["arxiv"]}} in clauses
    assert not SearchFilters()


def test_knn_filters_go_inside_the_knn_clause():
    query = knn_query(VECTOR, 50, FILTERS, target="paper", ef_search=100)
    clause = query["knn"]["embedding"]
    assert clause["filter"] == {"bool": {"filter": FILTERS.clauses()}}
    assert clause["k"] == 50 and clause["method_parameters"] == {"ef_search": 100}
    nested = knn_query(VECTOR, 50, FILTERS, target="chunks")
    assert nested["nested"]["path"] == "chunks"
    assert nested["nested"]["query"]["knn"]["chunks.embedding"]["filter"]["bool"]["filter"] == FILTERS.clauses()


@pytest.mark.parametrize("mode", ["bm25", "knn", "hybrid", "rrf", "bool"])
def test_every_mode_applies_filters_and_hides_vectors(mode):
    body = search_body(mode, "graph neural networks", VECTOR, 10, FILTERS)
    text = json.dumps(body)
    assert text.count('"gte": 2019') >= 1
    assert "query_string" not in text
    assert "embedding" in body["_source"]["excludes"]
    if mode in ("hybrid", "rrf"):
        sub = body["query"]["hybrid"]["queries"]
        assert len(sub) == 2 and all('"gte": 2019' in json.dumps(q) for q in sub)


def test_modes_other_than_bm25_need_a_vector():
    with pytest.raises(ValueError, match="needs a query vector"):
        search_body("hybrid", "q", None, 10)


def test_special_characters_stay_plain_text_in_multi_match():
    raw = 'title:(foo OR bar) AND "x" -y +z && || ! ( ) { } [ ] ^ ~ * ? : \\ /'
    body = search_body("bm25", clean_query(raw), None, 5)
    assert body["query"]["multi_match"]["query"] == " ".join(raw.split())


def test_clean_query_rejects_empty_and_cuts_long():
    with pytest.raises(ValueError, match="empty"):
        clean_query(" \n\t ")
    assert len(clean_query("word " * 5000)) == 4000


def test_pipelines():
    settings = HybridSettings(bm25_weight=0.4, knn_weight=0.6)
    proc = hybrid_pipeline(settings)["phase_results_processors"][0]["normalization-processor"]
    assert proc["normalization"]["technique"] == "min_max"
    assert proc["combination"] == {"technique": "arithmetic_mean", "parameters": {"weights": [0.4, 0.6]}}
    assert rrf_pipeline(settings)["phase_results_processors"][0]["score-ranker-processor"]["combination"]["technique"] == "rrf"
    assert settings.pipeline_name("hybrid") != HybridSettings().pipeline_name("hybrid")


def test_client_side_rrf_rewards_agreement():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], rank_constant=60)
    assert list(fused)[:2] == ["b", "c"]
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)


def test_index_body_records_model_dimension_and_method():
    spec = IndexSpec(model="m", dimension=768, engine="lucene", space_type="innerproduct")
    body = build_index_body(spec)
    props = body["mappings"]["properties"]
    for field in (props["embedding"], props["chunks"]["properties"]["embedding"]):
        assert field["dimension"] == 768
        assert field["method"]["engine"] == "lucene" and field["method"]["space_type"] == "innerproduct"
    assert props["chunks"]["type"] == "nested"
    assert props["chunks"]["properties"]["text"]["index"] is False  # read from _source only: analysing it cost bulk time
    assert IndexSpec.from_meta(body["mappings"]["_meta"]) == spec
    assert "knn.algo_param.ef_search" in build_index_body(IndexSpec(model="m", dimension=8, engine="faiss"))["settings"]["index"]


def test_spec_mismatches_name_what_differs():
    problems = IndexSpec(model="a", dimension=384).mismatches(IndexSpec(model="b", dimension=768))
    assert any("model" in p for p in problems) and any("dimension" in p for p in problems)
    assert IndexSpec(model="a", dimension=384).mismatches(IndexSpec(model="a", dimension=384, m=32)) == []


def test_next_version():
    assert next_version("papers", []) == 1
    assert next_version("papers", ["papers-v1", "papers-v3", "papers-vx", "other-v9"]) == 4


def test_parse_filters():
    f = parse_filters(["year=2019..2021", "category=cs.IR", "author=Jane Doe", "source=arxiv"])
    assert (f.year_from, f.year_to, f.categories, f.authors, f.sources) == (2019, 2021, ("cs.IR",), ("Jane Doe",), ("arxiv",))
    assert parse_filters(["year=2020"]).year_to == 2020
    assert parse_filters(["year=2020.."]).year_to is None
    for bad in ["year=abc", "colour=red", "category="]:
        with pytest.raises(MMRagError, match="--filter"):
            parse_filters([bad])


def test_metrics_by_hand():
    assert ndcg_at_k(["a", "b"], {"b": 1}, 10) == pytest.approx(1 / 1.5849625)
    run = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"x": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"y": 1}}
    assert evaluate(run, qrels) == {"NDCG@10": 0.5, "MRR@10": 0.5, "Recall@100": 0.5}


def test_best_passage_falls_back_to_words_when_vectors_do_not_match():
    from multi_modal_rag.search import best_passage

    chunks = [{"text": "coral reefs bleach", "embedding": [1.0, 0.0]}, {"text": "malaria drugs", "embedding": [0.0, 1.0]}]
    assert best_passage(chunks, np.array([0.0, 1.0]), "anything") == "malaria drugs"
    # a query vector of another model (the alias moved mid-search): no crash, words decide
    assert best_passage(chunks, np.array([1.0, 0.0, 0.0]), "coral reefs") == "coral reefs bleach"


def test_evaluate_at_chosen_cutoffs_and_without_the_query_itself():
    from multi_modal_rag.evaluation import evaluate

    run = {"q1": {"q1": 9.0, "d1": 5.0, "d2": 4.0}, "q2": {"d9": 3.0, "d3": 2.0}}
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 2}}
    # q1's own id is dropped (BEIR's ignore_identical_ids): d1 is first
    assert evaluate(run, qrels, k_values=[1, 2]) == {"NDCG@1": 0.5, "MRR@1": 0.5, "Recall@1": 0.5,
                                                   "NDCG@2": round((1 + 1 / 1.5849625) / 2, 4), "MRR@2": 0.75, "Recall@2": 1.0}
    kept = evaluate(run, qrels, k_values=[1], ignore_identical_ids=False)
    assert kept == {"NDCG@1": 0.0, "MRR@1": 0.0, "Recall@1": 0.0}
    with pytest.raises(Exception, match="1 or more"):
        evaluate(run, qrels, k_values=[0])


def test_sq8_asks_the_lucene_engine_for_its_scalar_quantizer():
    from multi_modal_rag.errors import InputError
    from multi_modal_rag.store.template import IndexSpec, build_index_body

    spec = IndexSpec(model="m", dimension=8, vector_encoding="sq8")
    props = build_index_body(spec)["mappings"]["properties"]
    for field in (props["embedding"], props["chunks"]["properties"]["embedding"]):
        assert field["method"]["parameters"]["encoder"] == {"name": "sq"}
    assert "encoder" not in build_index_body(IndexSpec(model="m", dimension=8))["mappings"]["properties"]["embedding"]["method"]["parameters"]
    assert IndexSpec.from_meta(spec.meta()).vector_encoding == "sq8"
    assert IndexSpec.from_meta({"multi_modal_rag": {"model": "m", "dimension": 8}}).vector_encoding == "fp32"
    assert not spec.mismatches(IndexSpec(model="m", dimension=8))  # floats go in and out either way
    with pytest.raises(InputError, match="lucene"):
        build_index_body(IndexSpec(model="m", dimension=8, engine="faiss", vector_encoding="sq8"))
