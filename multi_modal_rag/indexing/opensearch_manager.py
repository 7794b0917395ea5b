"""Deprecated: the manager is `multi_modal_rag.manager`; this path goes in the next release."""

from ..manager import OpenSearchManager  # noqa: F401
from ..search.searcher import best_passage  # noqa: F401
from ..store import count_papers_and_chunks  # noqa: F401
