"""multi_modal_rag: the search backbone of an academic research assistant.

Indexes papers into OpenSearch with sentence-transformers embeddings, serves hybrid
(BM25 + kNN) search with optional reranking, and migrates a live index to a new model.

    from multi_modal_rag import OpenSearchManager, read_papers, SearchFilters
"""

import logging

from .connection import ConnectionSettings
from .documents import Paper, RecordError, read_papers
from .errors import (
    ConnectionFailedError,
    IndexMismatchError,
    IndexNotFoundError,
    InputError,
    MigrationError,
    MMRagError,
    ModelNotAvailableError,
    OpenSearchRequestError,
)
from .manager import OpenSearchManager
from .migration import Migrator
from .results import IndexResult, IndexStatus, IndexSummary, SearchHit
from .search import HybridSettings, SearchFilters
from .store import IndexSpec

__version__ = "0.1.0"

__all__ = [
    "ConnectionFailedError", "ConnectionSettings", "HybridSettings", "IndexMismatchError", "IndexNotFoundError",
    "IndexResult", "IndexSpec", "IndexStatus", "IndexSummary", "InputError", "MMRagError", "MigrationError",
    "Migrator", "ModelNotAvailableError", "OpenSearchManager", "OpenSearchRequestError", "Paper", "RecordError",
    "SearchFilters", "SearchHit", "read_papers",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
