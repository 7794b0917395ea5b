"""The read side: the five search modes through the alias, best passages, reranking, client-side RRF."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
from opensearchpy.exceptions import NotFoundError, RequestError

from .. import store
from ..binding import AliasBinding
from ..errors import IndexNotFoundError
from ..models import load_cross_encoder
from ..results import SearchHit
from .queries import (
    NO_FILTERS,
    SOURCE_EXCLUDES,
    HybridSettings,
    SearchFilters,
    SearchMode,
    bm25_query,
    clean_query,
    hybrid_pipeline,
    knn_query,
    reciprocal_rank_fusion,
    rrf_pipeline,
    search_body,
)

logger = logging.getLogger(__name__)


class Searcher:
    """Search an alias in any mode; query vectors are cached (LRU) per process."""

    def __init__(self, binding: AliasBinding, *, hybrid: HybridSettings = HybridSettings(), query_cache_size: int = 1024):
        self.binding = binding
        self.hybrid = hybrid
        self.query_cache_size = query_cache_size
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pipelines_ready: set[str] = set()
        self._rrf_supported: bool | None = None

    @property
    def alias(self) -> str:
        return self.binding.alias

    def embed_query(self, text: str) -> np.ndarray:
        """The query vector, from the LRU cache when it was seen recently."""
        cached = self._query_cache.get(text)
        if cached is not None:
            self._query_cache.move_to_end(text)
            return cached
        vector = self.binding.encoder.encode_queries([text])[0]
        if self.query_cache_size > 0:
            self._query_cache[text] = vector
            if len(self._query_cache) > self.query_cache_size:
                self._query_cache.popitem(last=False)
        return vector

    def search(
        self,
        query: str,
        *,
        mode: SearchMode = "hybrid",
        size: int = 10,
        filters: SearchFilters = NO_FILTERS,
        rerank: str | None = None,
        rerank_top: int = 50,
        hybrid: HybridSettings | None = None,
        passages: int = 10,
    ) -> list[SearchHit]:
        """Search the alias; optionally rerank the top `rerank_top` with a CrossEncoder.

        The top `passages` hits (and all reranked ones) get their best matching passage.
        """
        text = clean_query(query)
        hybrid = hybrid or self.hybrid
        fetch = max(size, rerank_top) if rerank else size
        vector = None if mode == "bm25" else self.embed_query(text)
        try:
            with store.translated(self.binding.url, f"{mode} search in {self.alias}"):
                if vector is not None and self.binding.index is None:
                    self.binding.rebind()  # a reader given its model checks it against the index once
                try:
                    hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
                    moved = vector is not None and any(hit.index != self.binding.index for hit in hits)
                except RequestError as exc:
                    if "dimension" not in str(exc).lower():
                        raise
                    moved = True
                if moved:  # a migration swapped the alias since this query was embedded: embed it for the new index
                    if self._rebind():
                        vector = self.embed_query(text)
                    hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
                self._add_passages(hits[: max(passages, rerank_top if rerank else 0)], vector, text)
        except IndexNotFoundError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise IndexNotFoundError(f"No index or alias named {self.alias!r}: {store.describe(exc.__cause__)}") from exc
            raise
        if rerank:
            hits = self.rerank(text, hits, rerank)
        return hits[:size]

    def _rebind(self) -> bool:
        """Follow the alias to its new index; True if the model changed (cached query vectors dropped)."""
        model = self.binding.model_name
        self.binding.rebind()
        if self.binding.model_name == model:
            return False
        self._query_cache.clear()
        return True

    def ensure_pipeline(self, mode: str, hybrid: HybridSettings) -> str:
        """Create (once) and return the search pipeline for hybrid or rrf."""
        name = hybrid.pipeline_name(mode)  # type: ignore[arg-type]
        if name not in self._pipelines_ready:
            body = rrf_pipeline(hybrid) if mode == "rrf" else hybrid_pipeline(hybrid)
            store.put_search_pipeline(self.binding.client, name, body)
            self._pipelines_ready.add(name)
        return name

    def _run_search(self, mode, text, vector, size, filters, hybrid) -> list[SearchHit]:
        if mode == "rrf" and not self._rrf_available(hybrid):
            return self._client_side_rrf(text, vector, size, filters, hybrid)
        body = search_body(mode, text, vector, size, filters, hybrid)
        params = {"search_pipeline": self.ensure_pipeline(mode, hybrid)} if mode in ("hybrid", "rrf") else {}
        response = self.binding.client.search(index=self.alias, body=body, params=params)
        return [_hit_from(raw) for raw in response["hits"]["hits"]]

    def _add_passages(self, hits: list[SearchHit], vector: np.ndarray | None, text: str) -> None:
        """Fetch the chunks of these hits in one request and keep each paper's best one."""
        if not hits:
            return
        response = self.binding.client.mget(index=self.alias, body={"ids": [h.id for h in hits]}, _source_includes=["chunks"])
        chunks = {d["_id"]: d["_source"].get("chunks", []) for d in response["docs"] if d.get("found")}
        for hit in hits:
            hit.passage = best_passage(chunks.get(hit.id, []), vector, text) or hit.source.get("abstract", "")[:500]

    def rerank(self, query: str, hits: list[SearchHit], model: str, *, batch_size: int = 32) -> list[SearchHit]:
        """Score (query, title + passage) pairs with a CrossEncoder and sort by that score."""
        if not hits:
            return hits
        encoder = load_cross_encoder(model)
        pairs = [(query, f"{hit.title}. {hit.passage}".strip(". ")) for hit in hits]
        scores = encoder.predict(pairs, batch_size=batch_size, show_progress_bar=False)
        for hit, score in zip(hits, np.asarray(scores, dtype=float).reshape(len(hits), -1)[:, -1]):
            hit.rerank_score = float(score)
        return sorted(hits, key=lambda h: h.rerank_score, reverse=True)

    def _rrf_available(self, hybrid: HybridSettings) -> bool:
        if self._rrf_supported is None:
            try:
                self.ensure_pipeline("rrf", hybrid)
                self._rrf_supported = True
            except RequestError as exc:
                logger.warning("score-ranker-processor unavailable (%s); fusing ranks client-side", store.describe(exc))
                self._rrf_supported = False
        return self._rrf_supported

    def _client_side_rrf(self, text, vector, size, filters, hybrid) -> list[SearchHit]:
        k = max(size, hybrid.candidates)
        by_id: dict[str, SearchHit] = {}
        rankings = []
        for query in (bm25_query(text, filters), knn_query(vector, k, filters, hybrid.knn_target, hybrid.ef_search)):
            body = {"size": k, "query": query, "_source": {"excludes": SOURCE_EXCLUDES}}
            hits = [_hit_from(raw) for raw in self.binding.client.search(index=self.alias, body=body)["hits"]["hits"]]
            rankings.append([h.id for h in hits])
            for hit in hits:
                by_id.setdefault(hit.id, hit)
        fused = reciprocal_rank_fusion(rankings, hybrid.rank_constant)
        result = []
        for doc_id, score in list(fused.items())[:size]:
            by_id[doc_id].score = score
            result.append(by_id[doc_id])
        return result


def best_passage(chunks: list[dict[str, Any]], vector: np.ndarray | None, text: str) -> str:
    """The chunk closest to the query vector, or with the most query words when there is no vector."""
    if not chunks:
        return ""
    # The dimensions differ only when a migration swapped the alias between the search and this fetch.
    if vector is not None and all(len(c.get("embedding") or ()) == len(vector) for c in chunks):
        matrix = np.asarray([c["embedding"] for c in chunks], dtype=np.float32)
        return chunks[int(np.argmax(matrix @ vector))]["text"]
    words = set(text.lower().split())
    return max(chunks, key=lambda c: len(words & set(c.get("text", "").lower().split())))["text"]


def _hit_from(raw: dict[str, Any]) -> SearchHit:
    source = raw.get("_source", {})
    return SearchHit(
        id=raw["_id"],
        title=source.get("title", ""),
        score=float(raw.get("_score") or 0.0),
        highlights=raw.get("highlight", {}),
        source=source,
        index=raw.get("_index", ""),
    )
