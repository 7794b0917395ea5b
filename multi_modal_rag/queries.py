"""Deprecated: moved to `multi_modal_rag.search.queries`; this path goes in the next release."""

import warnings

from .search.queries import (  # noqa: F401
    BM25_FIELDS,
    MAX_QUERY_CHARS,
    NO_FILTERS,
    SEARCH_MODES,
    SOURCE_EXCLUDES,
    HybridSettings,
    KnnTarget,
    Normalization,
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

warnings.warn("multi_modal_rag.queries moved to multi_modal_rag.search.queries; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
