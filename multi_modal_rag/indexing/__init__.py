"""Indexing and search against OpenSearch."""

from .opensearch_manager import OpenSearchManager

__all__ = ["OpenSearchManager"]
