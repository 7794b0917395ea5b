"""The OpenSearch layer: the index template and spec, plain functions over a client (aliases and
versions, counts, pipelines, point-in-time scans), and the one translation of client errors."""

from .errors import describe, translate, translated
from .bulk import blocks_of, is_migration_block, item_reason, streaming_bulk
from .checkpoints import block_writes, in_flight, primary_terms, shard_checkpoints
from .indices import (
    alias_indices,
    count_papers_and_chunks,
    create_index,
    guard_versions,
    inherited_settings,
    is_orphan,
    next_index_name,
    ping,
    put_search_pipeline,
    resolve_alias,
    set_write_block,
    spec_of,
    store_size,
    successor_name,
    versions,
    write_blocked,
)
from .projections import PROJECTIONS_INDEX, load_projection, save_projection
from .scan import scan_sources
from .template import IndexSpec, build_index_body, guard_template, load_template, version_of, versioned_name

__all__ = [
    "IndexSpec", "PROJECTIONS_INDEX", "alias_indices", "block_writes", "in_flight", "primary_terms", "build_index_body", "count_papers_and_chunks", "create_index", "describe",
    "blocks_of", "guard_template", "guard_versions", "is_migration_block", "is_orphan", "item_reason", "inherited_settings", "load_projection", "load_template", "next_index_name", "ping", "put_search_pipeline",
    "resolve_alias", "save_projection", "scan_sources", "set_write_block", "shard_checkpoints", "spec_of", "store_size",
    "streaming_bulk", "successor_name", "translate", "translated", "version_of", "versioned_name", "versions", "write_blocked",
]
