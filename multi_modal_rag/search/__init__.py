"""The read side: request bodies and pipelines (pure functions) and the Searcher that runs them."""

from .queries import NO_FILTERS, SEARCH_MODES, HybridSettings, SearchFilters, SearchMode
from .searcher import Searcher, best_passage

__all__ = ["NO_FILTERS", "SEARCH_MODES", "HybridSettings", "SearchFilters", "SearchMode", "Searcher", "best_passage"]
