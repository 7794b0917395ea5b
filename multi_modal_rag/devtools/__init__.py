"""Developer tooling, not needed by the library at run time: a local OpenSearch node without Docker.

`node_build` fetches and assembles the node folder; `local_node` starts, stops and inspects it.
"""

from ..paths import default_cache_dir
from .local_node import DEFAULT_PORT, NodeStatus, node_status, start_node, stop_node
from .node_build import OPENSEARCH_VERSION, NodeError

__all__ = [
    "DEFAULT_PORT", "NodeError", "NodeStatus", "OPENSEARCH_VERSION", "default_cache_dir", "node_status", "start_node",
    "stop_node",
]
