"""Deprecated: moved to `multi_modal_rag.devtools`; this path goes in the next release."""

import warnings

from .devtools import (
    DEFAULT_PORT,
    OPENSEARCH_VERSION,
    NodeError,
    NodeStatus,
    default_cache_dir,
    node_status,
    start_node,
    stop_node,
)
from .devtools.node_build import find_java_home

__all__ = [
    "DEFAULT_PORT", "NodeError", "NodeStatus", "OPENSEARCH_VERSION", "default_cache_dir", "find_java_home", "node_status",
    "start_node", "stop_node",
]

warnings.warn(
    "multi_modal_rag.local_node moved to multi_modal_rag.devtools; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
