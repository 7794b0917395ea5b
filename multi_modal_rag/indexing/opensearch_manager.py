"""OpenSearchManager: the Python API the RAG app uses to index papers and search them.

Every read and write goes through an alias (`papers` -> `papers-v1`), so a migration can
swap the index behind it. Indexing is a generator core (`index_documents` yields one
`IndexResult` per input record) with a thin consumer (`index_all`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError as OSConnectionError,
    NotFoundError,
    RequestError,
    SSLError,
    TransportError,
)

from ..connection import ConnectionSettings, make_client
from ..documents import Paper, RecordError, iter_unique, word_windows
from ..errors import ConnectionFailedError, IndexMismatchError, IndexNotFoundError, MMRagError
from ..index_body import IndexSpec, build_index_body, next_version, versioned_name
from ..models import canonical_name, embedding_dimension, load_cross_encoder, load_embedder, max_tokens
from ..queries import (
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
from ..results import IndexResult, IndexStatus, IndexSummary, SearchHit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_DONE = object()


class OpenSearchManager:
    """Index papers with paper- and chunk-level vectors and serve bm25/knn/hybrid/rrf/bool search."""

    def __init__(
        self,
        index: str = "papers",
        model: str | None = None,
        settings: ConnectionSettings | None = None,
        client: OpenSearch | None = None,
        *,
        batch_size: int = 64,
        encode_batch_size: int = 32,
        bulk_docs: int = 200,
        bulk_bytes: int = 20 * 1024 * 1024,
        max_retries: int = 5,
        initial_backoff: float = 1.0,
        query_cache_size: int = 1024,
        hybrid: HybridSettings = HybridSettings(),
        spec_overrides: dict[str, Any] | None = None,
    ):
        self.alias = index
        self.model_name = model
        self._follow_index_model = model is None  # a reader takes the index's model, and follows it after a migration
        self.settings = settings or ConnectionSettings.from_env()
        self._client = client
        self._embedder: SentenceTransformer | None = None
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
        self.bulk_docs = bulk_docs
        self.bulk_bytes = bulk_bytes
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.hybrid = hybrid
        self.spec_overrides = spec_overrides or {}
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.query_cache_size = query_cache_size
        self._pipelines_ready: set[str] = set()
        self._rrf_supported: bool | None = None

    # ---- lazy resources -------------------------------------------------------------

    @property
    def client(self) -> OpenSearch:
        """The OpenSearch client, created on first use."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    @property
    def embedder(self) -> "SentenceTransformer":
        """The embedding model, loaded on first use: the one given, else the index's own."""
        if self._embedder is None:
            if self.model_name is None:
                self.model_name = self._recorded_model()
            self._embedder = load_embedder(self.model_name)
        return self._embedder

    def _recorded_model(self) -> str:
        index = self.resolve_index()
        spec = self.index_spec_of(index) if index else None
        if spec is None:
            raise IndexNotFoundError(f"No multi_modal_rag index behind {self.alias!r} to take the model from; pass --model.")
        return spec.model

    def spec(self) -> IndexSpec:
        """The index spec for this manager's model (dimension read from the model)."""
        dimension = embedding_dimension(self.embedder)
        words = max(32, int(max_tokens(self.embedder) * 0.7))  # about 1.3 tokens a word, room for the title
        defaults = {"chunk_words": words, "chunk_overlap": max(8, words // 6)}
        return IndexSpec(model=canonical_name(self.model_name), dimension=dimension, **{**defaults, **self.spec_overrides})

    def ping(self) -> None:
        """Check the node answers; raise ConnectionFailedError naming the URL otherwise."""
        try:
            info = self.client.info()
        except (AuthenticationException, AuthorizationException) as exc:
            raise ConnectionFailedError(f"OpenSearch at {self.settings.safe_url} refused the credentials ({exc.status_code}).") from None
        except SSLError as exc:
            raise ConnectionFailedError(
                f"TLS verification of {self.settings.safe_url} failed ({_short(exc)}); set OPENSEARCH_CA_CERTS to the "
                "cluster's CA bundle, or OPENSEARCH_VERIFY_CERTS=false for a test node."
            ) from None
        except (OSConnectionError, TransportError) as exc:
            raise ConnectionFailedError(
                f"Cannot reach OpenSearch at {self.settings.safe_url}: {_short(exc)}. "
                "Start one with `mmrag node start` (or `docker compose up -d`), or set OPENSEARCH_URL."
            ) from None
        if not isinstance(info, dict) or "version" not in info:
            raise ConnectionFailedError(f"{self.settings.safe_url} answered, but not like OpenSearch does.")

    # ---- index lifecycle ------------------------------------------------------------

    def resolve_index(self) -> str | None:
        """The concrete index behind the alias (or the index of that name), or None."""
        try:
            indices = list(self.client.indices.get_alias(name=self.alias)) if self.client.indices.exists_alias(name=self.alias) else []
        except (OSConnectionError, TransportError) as exc:
            raise _connection_error(self.settings, exc) from None
        if len(indices) > 1:
            raise MMRagError(f"Alias {self.alias!r} points at several indices ({', '.join(sorted(indices))}); expected one.")
        if indices:
            return indices[0]
        if self.client.indices.exists(index=self.alias):
            return self.alias
        return None

    def index_spec_of(self, index: str) -> IndexSpec | None:
        """The spec recorded in an index's `_meta`."""
        mapping = self.client.indices.get_mapping(index=index)
        return IndexSpec.from_meta(mapping[index]["mappings"].get("_meta"))

    def create_index(self, spec: IndexSpec | None = None, attach_alias: bool = True) -> str:
        """Create the next `{alias}-vN` index for `spec`; point the alias at it if it has none."""
        spec = spec or self.spec()
        existing = list(self.client.indices.get(index=f"{self.alias}-v*", expand_wildcards="all", ignore_unavailable=True))
        name = versioned_name(self.alias, next_version(self.alias, existing))
        self.client.indices.create(index=name, body=build_index_body(spec))
        if attach_alias:
            self.client.indices.update_aliases(body={"actions": [{"add": {"index": name, "alias": self.alias}}]})
        logger.info("created index %s for %s (%d dims)", name, spec.model, spec.dimension)
        return name

    def ensure_index(self) -> str:
        """The index to write into: created on first use, else checked against this model."""
        self.ping()
        current = self.resolve_index()
        spec = self.spec()
        if current is None:
            return self.create_index(spec)
        recorded = self.index_spec_of(current)
        if recorded is None:
            raise IndexMismatchError(f"Index {current!r} was not created by multi_modal_rag (no _meta); not writing into it.")
        problems = spec.mismatches(recorded)
        if problems:
            raise IndexMismatchError(
                f"Index {current!r} (alias {self.alias!r}) does not match this model: {'; '.join(problems)}. "
                f"Use the index's model, or migrate it: `mmrag migrate --index {self.alias} --to-model {self.model_name}`."
            )
        return current

    # ---- indexing -------------------------------------------------------------------

    def index_documents(
        self, papers: Iterable[Paper | RecordError], pending: bool = False
    ) -> Iterator[IndexResult]:
        """Embed and bulk-index papers, yielding one IndexResult per input record.

        Embedding of the next batch overlaps the bulk request of the previous one. With
        `pending`, papers already indexed with this model and the same content are skipped.
        """
        self.ensure_index()
        spec = self.spec()
        results: queue.Queue = queue.Queue()
        actions: queue.Queue = queue.Queue(maxsize=4)  # bounded: memory stays flat on any corpus size
        origins: dict[str, tuple[str, int]] = {}
        writer = threading.Thread(target=self._bulk_writer, args=(actions, results), daemon=True, name="mmrag-bulk")
        writer.start()
        try:
            for batch in _batches(iter_unique(papers), self.batch_size):
                good: list[Paper] = []
                for item in batch:
                    if isinstance(item, RecordError):
                        yield IndexResult(item.doc_id, "failed", item.origin, item.reason)
                    else:
                        good.append(item)
                if pending and good:
                    try:
                        unchanged = self._unchanged_ids(good, spec.model)
                    except (OSConnectionError, TransportError) as exc:
                        for paper in good:
                            yield IndexResult(paper.doc_id(), "failed", paper.origin, f"pending check failed: {_short(exc)}")
                        continue
                    for paper in good:
                        if paper.doc_id() in unchanged:
                            yield IndexResult(paper.doc_id(), "skipped", paper.origin, "unchanged")
                    good = [p for p in good if p.doc_id() not in unchanged]
                if not good:
                    continue
                try:
                    docs = self.embed_papers(good, spec)
                except Exception as exc:  # a model failure fails this batch, reported per paper
                    for paper in good:
                        yield IndexResult(paper.doc_id(), "failed", paper.origin, f"embedding failed: {_short(exc)}")
                    continue
                for paper, doc in zip(good, docs):
                    origins[paper.doc_id()] = (paper.origin, len(doc["chunks"]))
                actions.put([{"_index": self.alias, "_id": p.doc_id(), "_source": d} for p, d in zip(good, docs)])
                yield from _drain(results, origins, block=False)
            actions.put(_DONE)
            while writer.is_alive() or not results.empty():
                yield from _drain(results, origins, block=True)
        finally:
            if writer.is_alive():
                actions.put(_DONE)

    def index_all(self, papers: Iterable[Paper | RecordError], pending: bool = False, refresh: bool = True) -> IndexSummary:
        """Index everything and return the summary (the simple consumer of index_documents)."""
        summary = IndexSummary()
        started = time.perf_counter()
        for result in self.index_documents(papers, pending=pending):
            summary.add(result)
        if refresh:
            try:
                self.refresh()
            except ConnectionFailedError as exc:  # the per-paper results above already say what was lost
                logger.warning("%s", exc)
        summary.seconds = time.perf_counter() - started
        return summary

    def chunk_texts(self, paper: Paper, spec: IndexSpec) -> list[tuple[int, str, str]]:
        """(position, stored text, text to embed) for each chunk; a paper without body is one title chunk."""
        windows = word_windows(paper.body, spec.chunk_words, spec.chunk_overlap) or [(0, paper.title)]
        prefix = f"{paper.title}. " if paper.title and paper.body else ""
        return [(pos, text, prefix + text) for pos, text in windows]

    def embed_papers(self, papers: list[Paper], spec: IndexSpec) -> list[dict[str, Any]]:
        """Index documents for papers: chunk, embed every chunk in one encode call, paper vector = mean of chunks."""
        chunked = [self.chunk_texts(p, spec) for p in papers]
        texts = [embed_text for chunks in chunked for _, _, embed_text in chunks]
        vectors = self.embedder.encode(
            texts,
            batch_size=self.encode_batch_size,
            normalize_embeddings=spec.normalized,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        _check_vectors(vectors, len(texts), spec.dimension)
        now = datetime.now(timezone.utc).isoformat()
        docs, offset = [], 0
        for paper, chunks in zip(papers, chunked):
            chunk_vectors = vectors[offset : offset + len(chunks)]
            offset += len(chunks)
            paper_vector = chunk_vectors.mean(axis=0)
            if spec.normalized:
                paper_vector = paper_vector / np.linalg.norm(paper_vector)
            docs.append(
                {
                    "paper_id": paper.doc_id(),
                    "title": paper.title,
                    "abstract": paper.abstract,
                    "content": paper.content,
                    "authors": paper.authors,
                    "categories": paper.categories,
                    "year": paper.year,
                    "published": paper.published,
                    "source": paper.source,
                    "url": paper.url,
                    "content_hash": paper.content_hash(),
                    "model": spec.model,
                    "chunk_count": len(chunks),
                    "indexed_at": now,
                    "embedding": paper_vector.tolist(),
                    "chunks": [
                        {"text": text, "position": pos, "embedding": vector.tolist()}
                        for (pos, text, _), vector in zip(chunks, chunk_vectors)
                    ],
                }
            )
        return docs

    def _unchanged_ids(self, papers: list[Paper], model: str) -> set[str]:
        ids = [p.doc_id() for p in papers]
        response = self.client.mget(index=self.alias, body={"ids": ids}, _source_includes=["content_hash", "model"])
        stored = {d["_id"]: d["_source"] for d in response["docs"] if d.get("found")}
        return {
            p.doc_id()
            for p in papers
            if stored.get(p.doc_id(), {}).get("content_hash") == p.content_hash() and stored[p.doc_id()].get("model") == model
        }

    def _bulk_writer(self, actions: queue.Queue, results: queue.Queue) -> None:
        def stream() -> Iterator[dict[str, Any]]:
            while (batch := actions.get()) is not _DONE:
                yield from batch

        try:
            for ok, item in helpers.streaming_bulk(
                self.client,
                stream(),
                chunk_size=self.bulk_docs,
                max_chunk_bytes=self.bulk_bytes,
                max_retries=self.max_retries,
                initial_backoff=self.initial_backoff,
                raise_on_error=False,
                raise_on_exception=False,
                yield_ok=True,
            ):
                results.put((ok, item))
        except Exception as exc:  # never leave the consumer waiting: report and drain what is left
            logger.error("bulk writer stopped: %s", _short(exc))
            results.put((False, {"index": {"_id": None, "error": _short(exc)}}))
            for leftover in stream():
                results.put((False, {"index": {"_id": leftover["_id"], "error": f"not sent: {_short(exc)}"}}))

    def refresh(self) -> None:
        """Make what was written searchable now."""
        try:
            self.client.indices.refresh(index=self.alias)
        except (OSConnectionError, TransportError) as exc:
            raise _connection_error(self.settings, exc) from None

    # ---- maintenance ----------------------------------------------------------------

    def delete(self, ids: Sequence[str]) -> int:
        """Delete papers by id; returns how many existed."""
        actions = ({"_op_type": "delete", "_index": self.alias, "_id": doc_id} for doc_id in ids)
        deleted = 0
        for ok, item in helpers.streaming_bulk(self.client, actions, raise_on_error=False):
            deleted += int(ok and item["delete"].get("result") == "deleted")
        self.client.indices.refresh(index=self.alias)
        return deleted

    def count(self) -> int:
        """Number of papers behind the alias."""
        return int(self.client.count(index=self.alias)["count"])

    def status(self) -> IndexStatus:
        """Alias, index, model, dimension, papers, chunks and store size."""
        self.ping()
        index = self.resolve_index()
        if index is None:
            raise IndexNotFoundError(f"No index or alias named {self.alias!r} at {self.settings.safe_url}.")
        try:
            spec = self.index_spec_of(index)
            documents, chunks = count_papers_and_chunks(self.client, index)
            stats = self.client.indices.stats(index=index, metric="store")
        except NotFoundError:
            raise IndexNotFoundError(f"Index {index!r} behind {self.alias!r} disappeared while reading its status.") from None
        except (OSConnectionError, TransportError) as exc:
            raise _connection_error(self.settings, exc) from None
        return IndexStatus(
            alias=self.alias,
            index=index,
            model=spec.model if spec else None,
            dimension=spec.dimension if spec else None,
            space_type=spec.space_type if spec else None,
            engine=spec.engine if spec else None,
            documents=documents,
            chunks=chunks,
            store_size_bytes=int(stats["_all"]["primaries"]["store"]["size_in_bytes"]),
        )

    # ---- search ---------------------------------------------------------------------

    def embed_query(self, text: str) -> np.ndarray:
        """The query vector, from the LRU cache when it was seen recently."""
        cached = self._query_cache.get(text)
        if cached is not None:
            self._query_cache.move_to_end(text)
            return cached
        vector = self.embedder.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        if self.query_cache_size > 0:
            self._query_cache[text] = vector
            if len(self._query_cache) > self.query_cache_size:
                self._query_cache.popitem(last=False)
        return vector

    def ensure_pipeline(self, mode: str, hybrid: HybridSettings) -> str:
        """Create (once) and return the search pipeline for hybrid or rrf."""
        name = hybrid.pipeline_name(mode)  # type: ignore[arg-type]
        if name not in self._pipelines_ready:
            body = rrf_pipeline(hybrid) if mode == "rrf" else hybrid_pipeline(hybrid)
            self.client.transport.perform_request("PUT", f"/_search/pipeline/{name}", body=body)
            self._pipelines_ready.add(name)
        return name

    def search(
        self,
        query: str,
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
            try:
                hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
            except RequestError as exc:
                if not (self._follow_index_model and "dimension" in str(exc).lower()):
                    raise
                # The alias moved to an index of another model (a migration swapped it): follow it.
                logger.info("index behind %s changed model; reloading", self.alias)
                self.model_name, self._embedder = None, None
                self._query_cache.clear()
                vector = self.embed_query(text)
                hits = self._run_search(mode, text, vector, fetch, filters, hybrid)
            self._add_passages(hits[: max(passages, rerank_top if rerank else 0)], vector, text)
        except NotFoundError as exc:
            raise IndexNotFoundError(f"No index or alias named {self.alias!r}: {_short(exc)}") from None
        except OSConnectionError as exc:
            raise _connection_error(self.settings, exc) from None
        if rerank:
            hits = self.rerank(text, hits, rerank)
        return hits[:size]

    def _add_passages(self, hits: list[SearchHit], vector: np.ndarray | None, text: str) -> None:
        """Fetch the chunks of these hits in one request and keep each paper's best one."""
        if not hits:
            return
        response = self.client.mget(index=self.alias, body={"ids": [h.id for h in hits]}, _source_includes=["chunks"])
        chunks = {d["_id"]: d["_source"].get("chunks", []) for d in response["docs"] if d.get("found")}
        for hit in hits:
            hit.passage = best_passage(chunks.get(hit.id, []), vector, text) or hit.source.get("abstract", "")[:500]

    def _run_search(self, mode, text, vector, size, filters, hybrid) -> list[SearchHit]:
        if mode == "rrf" and not self._rrf_available(hybrid):
            return self._client_side_rrf(text, vector, size, filters, hybrid)
        body = search_body(mode, text, vector, size, filters, hybrid)
        params = {"search_pipeline": self.ensure_pipeline(mode, hybrid)} if mode in ("hybrid", "rrf") else {}
        response = self.client.search(index=self.alias, body=body, params=params)
        return [_hit_from(raw) for raw in response["hits"]["hits"]]

    def rerank(self, query: str, hits: list[SearchHit], model: str, batch_size: int = 32) -> list[SearchHit]:
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
                logger.warning("score-ranker-processor unavailable (%s); fusing ranks client-side", _short(exc))
                self._rrf_supported = False
        return self._rrf_supported

    def _client_side_rrf(self, text, vector, size, filters, hybrid) -> list[SearchHit]:
        k = max(size, hybrid.candidates)
        by_id: dict[str, SearchHit] = {}
        rankings = []
        for query in (bm25_query(text, filters), knn_query(vector, k, filters, hybrid.knn_target, hybrid.ef_search)):
            body = {"size": k, "query": query, "_source": {"excludes": SOURCE_EXCLUDES}}
            hits = [_hit_from(raw) for raw in self.client.search(index=self.alias, body=body)["hits"]["hits"]]
            rankings.append([h.id for h in hits])
            for hit in hits:
                by_id.setdefault(hit.id, hit)
        fused = reciprocal_rank_fusion(rankings, hybrid.rank_constant)
        result = []
        for doc_id, score in list(fused.items())[:size]:
            by_id[doc_id].score = score
            result.append(by_id[doc_id])
        return result


def count_papers_and_chunks(client: OpenSearch, index: str) -> tuple[int, int]:
    """Papers in an index and the chunks they hold (the sum of their `chunk_count`)."""
    response = client.search(
        index=index, body={"size": 0, "track_total_hits": True, "aggs": {"chunks": {"sum": {"field": "chunk_count"}}}}
    )
    return int(response["hits"]["total"]["value"]), int(response["aggregations"]["chunks"]["value"] or 0)


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
    )


def _check_vectors(vectors: np.ndarray, count: int, dimension: int) -> None:
    if vectors.shape != (count, dimension):
        raise MMRagError(f"model returned vectors of shape {vectors.shape}, expected ({count}, {dimension})")
    if not np.isfinite(vectors).all():
        raise MMRagError("model returned non-finite vectors")


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _drain(results: queue.Queue, origins: dict[str, tuple[str, int]], block: bool) -> Iterator[IndexResult]:
    while True:
        try:
            ok, item = results.get(timeout=0.2) if block else results.get_nowait()
        except queue.Empty:
            return
        info = next(iter(item.values()))
        doc_id = info.get("_id")
        origin, chunks = origins.pop(doc_id, ("", 0))
        if ok:
            yield IndexResult(doc_id, "created" if info.get("result") == "created" else "updated", origin, None, chunks)
        else:
            yield IndexResult(doc_id, "failed", origin, _bulk_reason(info))
        if block:
            return


def _bulk_reason(info: dict[str, Any]) -> str:
    error = info.get("error") or info.get("exception") or info
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"[:500]
    return str(error)[:500]


def _short(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _connection_error(settings: ConnectionSettings, exc: BaseException) -> ConnectionFailedError:
    return ConnectionFailedError(f"Lost OpenSearch at {settings.safe_url}: {_short(exc)}")
