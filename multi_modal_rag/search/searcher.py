"""The read side: the five search modes through the alias, best passages, reranking, client-side RRF."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from opensearchpy.exceptions import NotFoundError, RequestError

from .. import store
from ..binding import AliasBinding
from ..encoders import Encoder
from ..errors import IndexNotFoundError, OpenSearchRequestError
from ..models import load_cross_encoder
from ..results import SearchHit
from .queries import (
    NO_FILTERS,
    HybridSettings,
    SearchFilters,
    SearchMode,
    clean_query,
    hybrid_pipeline,
    passage_query,
    reciprocal_rank_fusion,
    retriever_bodies,
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
        self._query_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the service searches from many threads
        self._rebind_lock = threading.Lock()
        self._pipelines_ready: set[str] = set()
        self._rrf_supported: bool | None = None
        self._pagination_depth = True  # False on a node whose hybrid query lacks it (neural-search < 2.19)

    @property
    def alias(self) -> str:
        return self.binding.alias

    def model_tag(self) -> str:
        """Names the model query vectors are made with now; a vector made under another tag is stale."""
        return _tag(self.binding.encoder)

    def loaded_model_tag(self) -> str | None:
        """The tag of the model loaded now, or None when none is loaded yet (nothing is loaded to find out)."""
        encoder = self.binding.loaded_encoder
        return _tag(encoder) if encoder is not None else None

    def encode_queries(self, texts: list[str]) -> tuple[str, np.ndarray]:
        """Embed many queries in one call: (the model's tag, the vectors). No cache: the caller batches."""
        encoder = self.binding.encoder
        return _tag(encoder), encoder.encode_queries(texts)

    def embed_query(self, text: str) -> np.ndarray:
        """The query vector, from the LRU cache when it was seen recently."""
        return self._embed(text)[1]

    def _embed(self, text: str) -> tuple[str, np.ndarray]:
        tag = self.model_tag()
        key = (tag, text)  # keyed by model too: after a swap, another thread may still add an old model's vector
        with self._lock:
            cached = self._query_cache.get(key)
            if cached is not None:
                self._query_cache.move_to_end(key)
                return tag, cached
        vector = self.binding.encoder.encode_queries([text])[0]
        if self.query_cache_size > 0:
            with self._lock:
                self._query_cache[key] = vector
                while len(self._query_cache) > self.query_cache_size:
                    self._query_cache.popitem(last=False)
        return tag, vector

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
        vector: np.ndarray | None = None,
        vector_model: str | None = None,
    ) -> list[SearchHit]:
        """Search the alias; optionally rerank the top `rerank_top` with a CrossEncoder.

        The top `passages` hits (and all reranked ones) get their best matching passage. A caller that
        embeds queries itself (the service batches them) passes `vector` with the `model_tag()` it was
        made under; a vector of a model the alias no longer uses is made again.
        """
        text = clean_query(query)
        hybrid = hybrid or self.hybrid
        fetch = max(size, rerank_top) if rerank else size
        if mode == "bm25":
            vector = None
        elif vector is None:
            vector_model, vector = self._embed(text)
        try:
            with store.translated(self.binding.url, f"{mode} search in {self.alias}"):
                if vector is not None and self.binding.index is None:
                    self.binding.rebind()  # a reader given its model checks it against the index once
                try:
                    hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
                    stale = vector is not None and (
                        vector_model != self.model_tag() or any(hit.index != self.binding.index for hit in hits))
                except RequestError as exc:
                    if "dimension" not in str(exc).lower():
                        raise
                    stale = True
                if stale:  # a migration swapped the alias since this query was embedded: embed it for the new index
                    self.rebind()
                    if vector_model != self.model_tag():
                        vector_model, vector = self._embed(text)
                    hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
                self._add_passages(hits[: max(passages, rerank_top if rerank else 0)], vector, text)
        except IndexNotFoundError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise IndexNotFoundError(f"No index or alias named {self.alias!r}: {store.describe(exc.__cause__)}") from exc
            raise
        if rerank:
            hits = self.rerank(text, hits, rerank)
        return hits[:size]

    def rebind(self) -> None:
        """Follow the alias to its index (one thread at a time); a model-less binding loads the new model."""
        with self._rebind_lock:
            self.binding.rebind()

    def retriever_scores(
        self, query: str, vector: np.ndarray, ids: Sequence[str], *,
        filters: SearchFilters = NO_FILTERS, hybrid: HybridSettings | None = None, vector_model: str | None = None,
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Why hybrid or rrf ranked these papers: {id: {"bm25": {"rank", "score"}, "knn": {...}}}.

        Each sub-query runs alone over the same candidates hybrid fuses (`candidates` hits); a paper
        outside a retriever's candidates has no entry for it. A `vector` made under another model than the
        alias's now (`vector_model`; a swap since the search) is made again, as `search` does.
        """
        hybrid = hybrid or self.hybrid
        text = clean_query(query)
        if vector_model is not None and vector_model != self.model_tag():
            vector = self._embed(text)[1]
        for attempt in (1, 2):
            bodies = retriever_bodies(text, vector, hybrid.candidates, filters, hybrid, with_source=False)
            lines: list[dict[str, Any]] = []
            for body in bodies.values():
                lines += [{"index": self.alias}, body]
            with store.translated(self.binding.url, f"retriever scores in {self.alias}"):
                responses = self.binding.client.msearch(body=lines)["responses"]
            if attempt == 2 or not any("dimension" in str(r.get("error", "")).lower() for r in responses):
                break
            self.rebind()  # the alias moved to another dimension since the search: embed for the new index
            vector = self._embed(text)[1]
        wanted = set(ids)
        scores: dict[str, dict[str, dict[str, float]]] = {doc_id: {} for doc_id in ids}
        for name, response in zip(bodies, responses):
            if "error" in response:
                raise OpenSearchRequestError(f"{name} sub-query failed: {response['error']}")
            for rank, raw in enumerate(response["hits"]["hits"], start=1):
                if raw["_id"] in wanted:
                    scores[raw["_id"]][name] = {"rank": rank, "score": float(raw.get("_score") or 0.0)}
        return scores

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
        body = search_body(mode, text, vector, size, filters, hybrid, pagination_depth=self._pagination_depth)
        params = {}
        if mode == "rrf" or (mode == "hybrid" and hybrid == self.hybrid):
            params = {"search_pipeline": self.ensure_pipeline(mode, hybrid)}
        elif mode == "hybrid":  # other weights (a request's): a request-scoped pipeline, not one more in cluster state
            body["search_pipeline"] = hybrid_pipeline(hybrid)
        try:
            response = self.binding.client.search(index=self.alias, body=body, params=params)
        except RequestError as exc:
            if not (self._pagination_depth and mode in ("hybrid", "rrf") and "pagination_depth" in str(exc)):
                raise
            logger.warning("this node's hybrid query has no pagination_depth: it fuses only `size` hits of each sub-query")
            self._pagination_depth = False
            return self._run_search(mode, text, vector, size, filters, hybrid)
        return [_hit_from(raw) for raw in response["hits"]["hits"]]

    def _add_passages(self, hits: list[SearchHit], vector: np.ndarray | None, text: str) -> None:
        """Give each hit its best passage: the chunk nearest the query vector, else the one with most query words."""
        if not hits:
            return
        best: dict[str, str] = {}
        if vector is not None:
            try:
                response = self.binding.client.search(index=self.alias, body=passage_query(vector, [h.id for h in hits]))
                best = {raw["_id"]: inner[0]["_source"]["text"] for raw in response["hits"]["hits"]
                        if (inner := raw.get("inner_hits", {}).get("chunks", {}).get("hits", {}).get("hits"))}
            except RequestError as exc:  # the alias moved to another dimension between the search and this fetch
                if "dimension" not in str(exc).lower():
                    raise
        missing = [h.id for h in hits if h.id not in best]
        if missing:
            response = self.binding.client.mget(index=self.alias, body={"ids": missing}, _source_includes=["chunks.text"])
            for doc in response["docs"]:
                if doc.get("found"):
                    best[doc["_id"]] = best_passage(doc["_source"].get("chunks", []), None, text)
        for hit in hits:
            hit.passage = best.get(hit.id) or hit.source.get("abstract", "")[:500]

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
        by_id: dict[str, SearchHit] = {}
        rankings = []
        for body in retriever_bodies(text, vector, max(size, hybrid.candidates), filters, hybrid).values():
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


def _tag(encoder: Encoder) -> str:
    return encoder.identity  # model and precision: an fp32 vector is stale for an int8 index of the same model


def best_passage(chunks: list[dict[str, Any]], vector: np.ndarray | None, text: str) -> str:
    """The chunk closest to the query vector, or with the most query words when there is no vector.

    The searcher asks the node for the nearest chunk (`passage_query`); this is for chunks already at hand."""
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
