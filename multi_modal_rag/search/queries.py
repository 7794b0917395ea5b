"""Search request bodies and search pipelines, built by pure functions (no I/O)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from ..documents import clean_text
from ..errors import InputError

SearchMode = Literal["bm25", "knn", "hybrid", "rrf", "bool"]
SEARCH_MODES: tuple[SearchMode, ...] = ("bm25", "knn", "hybrid", "rrf", "bool")
KnnTarget = Literal["paper", "chunks"]
Normalization = Literal["min_max", "l2"]
Combination = Literal["arithmetic_mean", "geometric_mean", "harmonic_mean"]
NORMALIZATIONS: tuple[Normalization, ...] = ("min_max", "l2")
COMBINATIONS: tuple[Combination, ...] = ("arithmetic_mean", "geometric_mean", "harmonic_mean")

BM25_FIELDS = ("title^2", "abstract", "content")
SOURCE_EXCLUDES = ["embedding", "chunks"]
MAX_QUERY_CHARS = 4000  # longer queries are cut here; BM25 and the model gain nothing past it
# Lucene counts every (field, term) leaf of a query against maxClauseCount (1024) however the query nests them:
# one multi_match, a bool of one match per field, simple_query_string all overflow at 342 terms over 3 fields.
# So BM25 reads the query up to its 300th distinct term (300 x 3 fields + filters and kNN stay under 1024).
BM25_MAX_TERMS = 300
# An over-count of the terms Lucene's standard tokenizer makes: Han and kana characters one each (it emits them
# one by one), runs of ASCII or of other word characters (a run longer than 255 is cut into more), any other
# character one each (emoji are tokens; punctuation is not, so it is counted for nothing).
_TERMS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]"
                    r"|[0-9A-Za-z_]+|[^\W0-9A-Za-z_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[^\w\s]")


@dataclass(frozen=True)
class SearchFilters:
    """Filters that apply in every mode, inside kNN too."""

    year_from: int | None = None
    year_to: int | None = None
    categories: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def clauses(self) -> list[dict[str, Any]]:
        """Term and range clauses for a bool `filter`."""
        clauses: list[dict[str, Any]] = []
        if self.year_from is not None or self.year_to is not None:
            bounds = {"gte": self.year_from, "lte": self.year_to}
            clauses.append({"range": {"year": {k: v for k, v in bounds.items() if v is not None}}})
        if self.categories:
            clauses.append({"terms": {"categories": [c.lower() for c in self.categories]}})
        if self.authors:
            clauses.append({"terms": {"authors.keyword": [a.lower() for a in self.authors]}})
        if self.sources:
            clauses.append({"terms": {"source": [s.lower() for s in self.sources]}})
        return clauses

    def __bool__(self) -> bool:
        return bool(self.clauses())


NO_FILTERS = SearchFilters()


@dataclass(frozen=True)
class HybridSettings:
    """How the hybrid and rrf modes fuse BM25 and kNN scores (the techniques of OpenSearch 2.19's
    normalization-processor and score-ranker-processor; a tuned set of them is a `recipes.Recipe`)."""

    # neural-search's own defaults; `mmrag eval --tune` chooses better ones on a train split (see recipes.py).
    bm25_weight: float = 0.5
    knn_weight: float = 0.5
    normalization: Normalization = "min_max"
    combination: Combination = "arithmetic_mean"
    rank_constant: int = 60
    knn_target: KnnTarget = "chunks"
    candidates: int = 100  # k of each kNN sub-query, and the hits of each sub-query that hybrid and rrf fuse
    ef_search: int = 100

    def weights(self) -> tuple[float, float]:
        """(bm25, knn) as the node takes them: each in [0, 1], summing to 1 (neural-search rejects other sums)."""
        total = self.bm25_weight + self.knn_weight
        if self.bm25_weight < 0 or self.knn_weight < 0 or not total > 0 or not math.isfinite(total):
            raise InputError(f"hybrid weights bm25={self.bm25_weight:g}, knn={self.knn_weight:g}: "
                             "give two finite weights of 0 or more, not both 0")
        bm25 = round(self.bm25_weight / total, 6)
        return bm25, round(1.0 - bm25, 6)

    def pipeline_name(self, mode: Literal["hybrid", "rrf"]) -> str:
        """One name per pipeline body: every parameter that goes into the pipeline is in its name."""
        if mode == "rrf":
            return f"mmrag-rrf-{self.rank_constant}"
        bm25, knn = self.weights()
        return f"mmrag-hybrid-{self.normalization}-{self.combination}-{bm25:g}-{knn:g}"


def clean_query(text: str) -> str:
    """Whitespace-normalised query text, cut to MAX_QUERY_CHARS, lone surrogates replaced as the readers do.
    Raises InputError if empty."""
    cleaned = " ".join(clean_text(text).split())
    if not cleaned:
        raise InputError("the query is empty")
    return cleaned[:MAX_QUERY_CHARS]


def bm25_terms(text: str, limit: int = BM25_MAX_TERMS) -> str:
    """`text` up to its `limit`-th distinct term (counted high, see _TERMS): BM25 of a longer query would
    overflow maxClauseCount. The model reads no further either (MiniLM stops at 256 word pieces)."""
    if len(text) <= limit:  # every term takes at least one character
        return text
    seen: set[str] = set()
    for match in _TERMS.finditer(text):
        term = match.group().lower()
        for start in range(0, len(term), 255):  # Lucene cuts a token at 255 characters
            seen.add(term[start:start + 255])
        if len(seen) > limit:
            return text[: match.start()].rstrip()
    return text


def bm25_query(text: str, filters: SearchFilters = NO_FILTERS) -> dict[str, Any]:
    """A multi_match over title^2, abstract and content, of the query's first BM25_MAX_TERMS terms. multi_match
    does not parse Lucene syntax, so special characters in the query are plain text (no query_string injection)."""
    match = {"multi_match": {"query": bm25_terms(text), "fields": list(BM25_FIELDS), "type": "cross_fields"}}
    return _with_filters(match, filters)


def knn_query(
    vector: Sequence[float],
    k: int,
    filters: SearchFilters = NO_FILTERS,
    target: KnnTarget = "paper",
    ef_search: int | None = None,
) -> dict[str, Any]:
    """A kNN query on the paper vector, or on the chunk vectors (a paper scores as its best chunk).

    Filters go into the kNN query itself (efficient filtering), so k results survive them.
    """
    field_name = "embedding" if target == "paper" else "chunks.embedding"
    clause: dict[str, Any] = {"vector": list(map(float, vector)), "k": k}
    if filters:
        clause["filter"] = {"bool": {"filter": filters.clauses()}}
    if ef_search:
        clause["method_parameters"] = {"ef_search": max(ef_search, k)}
    query = {"knn": {field_name: clause}}
    if target == "paper":
        return query
    return {"nested": {"path": "chunks", "score_mode": "max", "query": query}}


def _with_filters(query: dict[str, Any], filters: SearchFilters) -> dict[str, Any]:
    if not filters:
        return query
    return {"bool": {"must": [query], "filter": filters.clauses()}}


def search_body(
    mode: SearchMode,
    text: str,
    vector: Sequence[float] | None,
    size: int,
    filters: SearchFilters = NO_FILTERS,
    hybrid: HybridSettings = HybridSettings(),
    *,
    pagination_depth: bool = True,
) -> dict[str, Any]:
    """The `_search` body for one mode (hybrid and rrf also need their pipeline, see below).

    Hybrid and rrf fuse the best `max(size, candidates)` hits of each sub-query (`pagination_depth`, 2.19+;
    without it the node fuses only `size` of each, so the fused top 10 would depend on `size`)."""
    if mode != "bm25" and vector is None:
        raise ValueError(f"mode {mode!r} needs a query vector")
    k = max(size, hybrid.candidates)
    if mode == "bm25":
        query = bm25_query(text, filters)
    elif mode == "knn":
        query = knn_query(vector, max(size, k if filters else size), filters, hybrid.knn_target, hybrid.ef_search)
    elif mode == "bool":
        knn = knn_query(vector, k, filters, hybrid.knn_target, hybrid.ef_search)
        query = {"bool": {"should": [bm25_query(text), knn], "filter": filters.clauses()}}
    elif mode in ("hybrid", "rrf"):
        knn = knn_query(vector, k, filters, hybrid.knn_target, hybrid.ef_search)
        query = {"hybrid": {"queries": [bm25_query(text, filters), knn]}}
        if pagination_depth:
            query["hybrid"]["pagination_depth"] = k
    else:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
    return {
        "size": size,
        "query": query,
        "_source": {"excludes": SOURCE_EXCLUDES},
        "highlight": {
            "fields": {"title": {"number_of_fragments": 0}, "abstract": {"fragment_size": 200, "number_of_fragments": 2}},
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
        },
    }


def retriever_bodies(
    text: str, vector: Sequence[float], size: int, filters: SearchFilters = NO_FILTERS,
    hybrid: HybridSettings = HybridSettings(), *, with_source: bool = True,
) -> dict[str, dict[str, Any]]:
    """The BM25 and the kNN sub-query of hybrid and rrf, each as a search of its own (`size` hits)."""
    source: Any = {"excludes": SOURCE_EXCLUDES} if with_source else False
    knn = knn_query(vector, max(size, hybrid.candidates), filters, hybrid.knn_target, hybrid.ef_search)
    return {
        "bm25": {"size": size, "query": bm25_query(text, filters), "_source": source},
        "knn": {"size": size, "query": knn, "_source": source},
    }


def passage_query(vector: Sequence[float], ids: Sequence[str]) -> dict[str, Any]:
    """Each paper's chunk closest to the query vector, as the text of one inner hit per paper.

    The ids filter sits inside the kNN clause, so the chunks of just these papers are scored
    exactly; only the chunk texts come back, not every chunk's vector.
    """
    knn = {"vector": list(map(float, vector)), "k": len(ids), "filter": {"ids": {"values": list(ids)}}}
    return {
        "size": len(ids),
        "_source": False,
        "query": {"nested": {"path": "chunks", "score_mode": "max", "query": {"knn": {"chunks.embedding": knn}},
                             "inner_hits": {"size": 1, "_source": ["chunks.text"]}}},
    }


def hybrid_pipeline(settings: HybridSettings) -> dict[str, Any]:
    """A search pipeline that normalises and combines the two hybrid sub-query scores.

    min_max `lower_bounds` is left out: it came with neural-search 3.0, and 2.19 ignores it without a word."""
    return {
        "description": "multi_modal_rag hybrid: BM25 + kNN, normalised and weighted",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": settings.normalization},
                    "combination": {
                        "technique": settings.combination,
                        "parameters": {"weights": list(settings.weights())},
                    },
                }
            }
        ],
    }


def rrf_pipeline(settings: HybridSettings) -> dict[str, Any]:
    """A search pipeline that fuses the hybrid sub-queries by reciprocal rank (neural-search 2.19+).

    2.19 reads the rank constant from `combination.parameters`; one beside `technique` is ignored (60 is used)."""
    combination = {"technique": "rrf", "parameters": {"rank_constant": settings.rank_constant}}
    return {
        "description": "multi_modal_rag rrf: BM25 + kNN by reciprocal rank fusion",
        "phase_results_processors": [{"score-ranker-processor": {"combination": combination}}],
    }


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], rank_constant: int = 60) -> dict[str, float]:
    """Client-side RRF, for nodes without score-ranker-processor: id -> sum of 1/(c + rank)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rank_constant + rank)
    return dict(sorted(scores.items(), key=lambda item: item[1], reverse=True))
