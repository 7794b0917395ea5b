"""OpenSearchManager against the real node with the real MiniLM model."""

from __future__ import annotations

import json

import pytest

from multi_modal_rag.connection import ConnectionSettings
from multi_modal_rag.documents import Paper, read_papers
from multi_modal_rag.errors import ConnectionFailedError, IndexMismatchError
from multi_modal_rag import OpenSearchManager
from multi_modal_rag.models import model_path
from multi_modal_rag.search.queries import SEARCH_MODES, SearchFilters

PAPERS = [
    Paper(id="gnn", title="Graph neural networks for molecule property prediction",
          abstract="We apply message passing graph neural networks to predict molecular properties of drug candidates.",
          authors=["Jane Doe", "Ann Lee"], categories=["cs.LG"], year=2019, source="arxiv"),
    Paper(id="bert", title="Pretrained transformers for scientific text",
          abstract="A BERT language model pretrained on biomedical papers improves named entity recognition.",
          authors=["Bob Stone"], categories=["cs.CL"], year=2020, source="arxiv"),
    Paper(id="malaria", title="Artemisinin resistance in malaria parasites",
          abstract="Mutations in the kelch13 gene of Plasmodium falciparum confer resistance to artemisinin therapy.",
          authors=["Carla Ruiz"], categories=["q-bio"], year=2021, source="pubmed"),
    Paper(id="coral", title="Ocean warming and coral reef bleaching",
          abstract="Marine heatwaves drive mass coral bleaching events across tropical reefs.",
          authors=["Dan Wu", "Jane Doe"], categories=["q-bio", "physics.ao-ph"], year=2022, source="pubmed"),
]

# A long paper whose only mention of volcanoes is deep in its text: it can match only through a chunk.
FILLER = " ".join(f"The committee reviewed budget item number {i} and approved the spending plan." for i in range(120))
LONG = Paper(id="long", title="Annual report of the committee",
             content=FILLER + " Appendix: basaltic lava flows from the erupting volcano destroyed nearby villages in Iceland.",
             year=2018, source="report")


@pytest.fixture
def manager(settings: ConnectionSettings, index_name: str) -> OpenSearchManager:
    return OpenSearchManager(alias=index_name, model="minilm", settings=settings, batch_size=3)


@pytest.fixture
def indexed(manager: OpenSearchManager) -> OpenSearchManager:
    summary = manager.index_all(PAPERS + [LONG])
    assert (summary.created, summary.failed) == (5, 0)
    return manager


def test_first_index_run_creates_v1_behind_the_alias(indexed, client):
    assert client.indices.get_alias(name=indexed.alias) == {f"{indexed.alias}-v1": {"aliases": {indexed.alias: {}}}}
    status = indexed.status()
    assert (status.index, status.documents, status.dimension) == (f"{indexed.alias}-v1", 5, 384)
    assert status.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert status.chunks > 5  # the long paper has several chunks
    assert status.store_size_bytes > 0


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_every_mode_finds_the_relevant_paper(indexed, mode):
    hits = indexed.search("artemisinin resistant malaria", mode=mode, size=3)
    assert hits[0].id == "malaria", [h.id for h in hits]
    assert hits[0].title.startswith("Artemisinin") and hits[0].passage
    assert "embedding" not in hits[0].source


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_filters_apply_in_every_mode(indexed, mode):
    hits = indexed.search("neural networks and coral reefs", mode=mode, size=10,
                          filters=SearchFilters(authors=("jane doe",), year_from=2021))
    assert [h.id for h in hits] == ["coral"]
    hits = indexed.search("language model resistance", mode=mode, size=10, filters=SearchFilters(categories=("CS.CL",)))
    assert {h.id for h in hits} == {"bert"}
    hits = indexed.search("language model resistance", mode=mode, size=10, filters=SearchFilters(sources=("pubmed",), year_to=2021))
    assert {h.id for h in hits} == {"malaria"}


def test_a_long_paper_matches_through_its_best_chunk(indexed):
    hits = indexed.search("volcanic eruption lava", mode="knn", size=2)
    assert hits[0].id == "long"
    assert "volcano" in hits[0].passage
    hybrid = indexed.search("volcanic eruption lava", mode="hybrid", size=2)
    assert hybrid[0].id == "long" and "volcano" in hybrid[0].passage


def test_reindexing_updates_instead_of_duplicating(indexed):
    changed = Paper(**{**PAPERS[0].__dict__, "abstract": "Updated abstract about graph networks."})
    summary = indexed.index_all([changed, *PAPERS[1:]])
    assert (summary.created, summary.updated) == (0, 4)
    assert indexed.count() == 5
    assert "Updated abstract" in indexed.search("graph networks", mode="bm25", size=1)[0].source["abstract"]


def test_pending_mode_skips_unchanged_papers(indexed):
    changed = Paper(**{**PAPERS[1].__dict__, "title": "Pretrained transformers for biomedical text"})
    new = Paper(id="new", title="A brand new paper on quantum error correction", abstract="Surface codes.")
    summary = indexed.index_all([*PAPERS[:1], changed, *PAPERS[2:], new], pending=True)
    assert (summary.skipped, summary.updated, summary.created) == (3, 1, 1)
    assert indexed.count() == 6


def test_papers_without_id_get_a_stable_content_id(manager):
    anon = Paper(title="Untitled preprint on soil microbes", abstract="Soil bacteria fix nitrogen.")
    manager.index_all([anon])
    manager.index_all([Paper(title="Untitled preprint on soil microbes", abstract="Soil bacteria fix nitrogen.")])
    assert manager.count() == 1


def test_bad_records_are_reported_and_the_rest_indexed(manager, tmp_path):
    lines = [
        json.dumps({"id": "ok1", "title": "Protein folding with deep learning", "abstract": "AlphaFold."}),
        '{"id": "broken", ',
        json.dumps({"id": "empty", "title": " ", "abstract": "  "}),
        json.dumps({"id": "ok1", "title": "Duplicate id in the same file"}),
        json.dumps({"id": "huge", "title": "Very long", "content": "word " * 20000}),
    ]
    path = tmp_path / "papers.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin1", "title": "caf\xe9"}\n')
    summary = manager.index_all(read_papers(path))
    assert (summary.created, summary.failed) == (2, 4)
    reasons = {f.origin: f.reason for f in summary.failures}
    assert reasons[f"{path}:2"].startswith("malformed JSON")
    assert "empty or whitespace" in reasons[f"{path}:3"]
    assert "duplicate id" in reasons[f"{path}:4"]
    assert "invalid UTF-8" in reasons[f"{path}:6"]
    assert manager.status().chunks > 20000 // manager.spec().chunk_words  # the very long text is chunked, not truncated


def test_writing_with_another_model_is_refused(indexed, settings):
    other = OpenSearchManager(alias=indexed.alias, model="mpnet", settings=settings)
    with pytest.raises(IndexMismatchError, match="dimension: index has 384, this run uses 768"):
        other.index_all(PAPERS[:1])
    assert indexed.count() == 5


def test_search_uses_the_model_recorded_in_the_index(indexed, settings):
    reader = OpenSearchManager(alias=indexed.alias, settings=settings)  # no model given
    assert reader.search("coral bleaching", mode="knn", size=1)[0].id == "coral"
    assert reader.model_name == "sentence-transformers/all-MiniLM-L6-v2"


def test_delete_by_id(indexed):
    assert indexed.delete(["coral", "missing"]) == 1
    assert indexed.count() == 4


def test_awkward_queries(indexed):
    with pytest.raises(ValueError, match="empty"):
        indexed.search("   ", mode="hybrid")
    nasty = 'malaria:(artemisinin OR "kelch13") AND -resistance && || ! { } [ ] ^ ~ * ? \\ / <script>'
    for mode in SEARCH_MODES:
        assert indexed.search(nasty, mode=mode, size=3)[0].id == "malaria"
    long_query = "coral reef bleaching " * 1000
    assert indexed.search(long_query, mode="hybrid", size=1)[0].id == "coral"


def test_rerank_with_a_cross_encoder_from_a_local_folder(indexed):
    # No trained reranker ships in a package: a CrossEncoder built on the MiniLM folder has a random
    # head, so this checks the code path (scores, order, size), not quality.
    hits = indexed.search("coral reefs", mode="hybrid", size=3, rerank=model_path("minilm"), rerank_top=5)
    assert len(hits) == 3
    scores = [h.rerank_score for h in hits]
    assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)


def test_query_embedding_cache(indexed):
    first = indexed.embed_query("coral reefs")
    assert indexed.embed_query("coral reefs") is first
    indexed.searcher.query_cache_size = 0
    indexed.searcher._query_cache.clear()
    assert indexed.embed_query("coral reefs") is not indexed.embed_query("coral reefs")


def test_unreachable_or_wrong_url_is_one_clear_error(index_name):
    dead = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url="http://127.0.0.1:1", timeout=2))
    with pytest.raises(ConnectionFailedError, match=r"Cannot reach OpenSearch at http://127.0.0.1:1"):
        dead.index_all(PAPERS)
    with pytest.raises(ConnectionFailedError, match="Cannot reach"):
        dead.status()


def test_client_side_rrf_when_the_node_lacks_score_ranker(indexed):
    indexed._rrf_supported = False  # as on a node without neural-search's score-ranker-processor
    hits = indexed.search("artemisinin resistant malaria", mode="rrf", size=3)
    assert hits[0].id == "malaria" and hits[0].passage
    assert hits[0].score == pytest.approx(2 / 61)  # first in both rankings
