"""OpenSearchManager: the Python API the RAG app uses, one object for the write and the read side.

Every read and write goes through an alias (`papers` -> `papers-v1`), so a migration can swap the
index behind it. The manager only wires an `AliasBinding` (node, alias, model) to an `IndexWriter`
and a `Searcher`; the work is done there.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from opensearchpy import OpenSearch

from .binding import AliasBinding
from .connection import ConnectionSettings
from .documents import Paper, RecordError
from .models import Device, Precision
from .results import IndexResult, IndexStatus, IndexSummary, SearchHit
from .search import NO_FILTERS, HybridSettings, SearchFilters, SearchMode, Searcher
from .store import IndexSpec
from .writer import IndexWriter


class OpenSearchManager:
    """Index papers with paper- and chunk-level vectors and serve bm25/knn/hybrid/rrf/bool search."""

    def __init__(
        self,
        alias: str = "papers",
        model: str | None = None,
        settings: ConnectionSettings | None = None,
        client: OpenSearch | None = None,
        *,
        index: str | None = None,
        batch_size: int = 256,  # papers a model call embeds: long enough for its length-sorting to cut padding
        encode_batch_size: int = 32,
        device: Device = "auto",
        precision: Precision | None = None,
        processes: int = 1,
        bulk_docs: int = 200,
        bulk_bytes: int = 20 * 1024 * 1024,
        max_retries: int = 5,
        initial_backoff: float = 1.0,
        query_cache_size: int = 1024,
        hybrid: HybridSettings = HybridSettings(),
        spec_overrides: dict[str, Any] | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        reduce_dim: int | None = None,
    ):
        if index is not None:
            warnings.warn("OpenSearchManager(index=...) is now alias=...; `index` goes in the next release",
                          DeprecationWarning, stacklevel=2)
            alias = index
        # precision None: the index's (fp32 for a new one); see AliasBinding. processes > 1: see Encoder.
        self.binding = AliasBinding(alias, model, settings, client, encode_batch_size=encode_batch_size, device=device,
                                    precision=precision, processes=processes, spec_overrides=spec_overrides,
                                    shards=shards, replicas=replicas, reduce_dim=reduce_dim)
        self.writer = IndexWriter(self.binding, batch_size=batch_size, bulk_docs=bulk_docs, bulk_bytes=bulk_bytes,
                                  max_retries=max_retries, initial_backoff=initial_backoff)
        self.searcher = Searcher(self.binding, hybrid=hybrid, query_cache_size=query_cache_size)

    # ---- the binding: node, alias, model ----------------------------------------------

    @property
    def alias(self) -> str:
        return self.binding.alias

    @property
    def settings(self) -> ConnectionSettings:
        return self.binding.settings

    @property
    def client(self) -> OpenSearch:
        return self.binding.client

    @property
    def model_name(self) -> str | None:
        """The model in use; for a manager created without one, known once the index was read."""
        return self.binding.model_name

    @property
    def embedder(self):
        """The loaded SentenceTransformer."""
        return self.binding.encoder.model

    def spec(self) -> IndexSpec:
        return self.binding.spec()

    def close(self) -> None:
        """Stop the encoding processes, if `processes` > 1 started them; the manager stays usable."""
        self.binding.close()

    def ping(self) -> None:
        self.binding.ping()

    def resolve_index(self) -> str | None:
        return self.binding.resolve()

    def ensure_index(self) -> str:
        return self.binding.ensure_index()

    def fit_projection(self, papers: Iterable[Paper]):
        """With `reduce_dim` and no index yet: fit the new index's PCA projection on `papers` (see `projection`)."""
        return self.binding.fit_projection(papers)

    # ---- writing ----------------------------------------------------------------------

    def index_documents(self, papers: Iterable[Paper | RecordError], *, pending: bool = False) -> Iterator[IndexResult]:
        return self.writer.index_documents(papers, pending=pending)

    def index_all(
        self,
        papers: Iterable[Paper | RecordError],
        *,
        pending: bool = False,
        refresh: bool = True,
        on_result: Callable[[IndexResult, IndexSummary], None] | None = None,
    ) -> IndexSummary:
        return self.writer.index_all(papers, pending=pending, refresh=refresh, on_result=on_result)

    def delete(self, ids: Sequence[str]) -> int:
        return self.writer.delete(ids)

    def refresh(self) -> None:
        self.writer.refresh()

    def count(self) -> int:
        return self.writer.count()

    def status(self) -> IndexStatus:
        return self.writer.status()

    # ---- reading ----------------------------------------------------------------------

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
        return self.searcher.search(query, mode=mode, size=size, filters=filters, rerank=rerank, rerank_top=rerank_top,
                                    hybrid=hybrid, passages=passages)

    def embed_query(self, text: str) -> np.ndarray:
        return self.searcher.embed_query(text)

    def rerank(self, query: str, hits: list[SearchHit], model: str) -> list[SearchHit]:
        return self.searcher.rerank(query, hits, model)
