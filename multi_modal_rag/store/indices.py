"""Aliases, versioned indices, specs, counts and search pipelines: plain functions over a client.

An alias (`papers`) points at one versioned index (`papers-v1`, `papers-v2`, ...); this module is
the one place that resolves an alias, lists its versions and names the next one. The functions
raise opensearch-py's exceptions; callers translate them (`store.errors.translated`).
"""

from __future__ import annotations

from typing import Any

from opensearchpy import OpenSearch

from ..errors import ConnectionFailedError, MMRagError
from .template import (
    ORPHAN_MARK,
    IndexSpec,
    build_index_body,
    guard_template,
    guard_template_name,
    next_version,
    version_of,
    versioned_name,
)


def ping(client: OpenSearch, url: str) -> None:
    """Check the node answers like OpenSearch does."""
    info = client.info()
    if not isinstance(info, dict) or "version" not in info:
        raise ConnectionFailedError(f"{url} answered, but not like OpenSearch does.")


def alias_indices(client: OpenSearch, alias: str) -> list[str]:
    """The indices an alias points at (none if there is no such alias)."""
    found = client.indices.get_alias(name=alias, params={"ignore": 404})  # one call: writers ask before every bulk
    if isinstance(found.get("status"), int) and "error" in found:  # 404: {"error": "alias [x] missing", "status": 404}
        return []
    return sorted(found)


def resolve_alias(client: OpenSearch, alias: str) -> str | None:
    """The one index behind `alias`, the index named `alias` if there is no such alias, or None."""
    indices = alias_indices(client, alias)
    if len(indices) > 1:
        raise MMRagError(f"Alias {alias!r} points at {len(indices)} indices ({', '.join(indices)}); expected one.")
    if indices:
        return indices[0]
    return alias if client.indices.exists(index=alias) else None


def versions(client: OpenSearch, alias: str) -> list[str]:
    """The existing `{alias}-vN` indices, open or closed."""
    return sorted(client.indices.get(index=f"{alias}-v*", expand_wildcards="all", ignore_unavailable=True))


def next_index_name(client: OpenSearch, alias: str) -> str:
    """The first free `{alias}-vN` name."""
    return versioned_name(alias, next_version(alias, versions(client, alias)))


def successor_name(client: OpenSearch, alias: str, index: str) -> str:
    """The index a migration of `index` writes: `{alias}-v(N+1)` after `{alias}-vN`, else the first free version."""
    version = version_of(alias, index)
    return versioned_name(alias, version + 1) if version is not None else next_index_name(client, alias)


def spec_of(client: OpenSearch, index: str) -> IndexSpec | None:
    """The spec recorded in an index's `_meta`, or None for an index this package did not create."""
    mapping = client.indices.get_mapping(index=index)
    return IndexSpec.from_meta(mapping[index]["mappings"].get("_meta"))


def create_index(client: OpenSearch, name: str, spec: IndexSpec, *, settings: dict[str, Any] | None = None,
                 alias: str | None = None) -> None:
    """Create `name` from the template for `spec`, with `settings` overriding the template's index settings, and
    `alias` pointing at it from the start (one cluster-state update, not two). It takes writes and is not marked
    an orphan, whatever the alias's guard template (`guard_versions`) says."""
    body = build_index_body(spec)
    body["settings"]["index"].update({"blocks": {"write": False}, **(settings or {})})
    body["mappings"]["_meta"][ORPHAN_MARK] = False
    if alias is not None:
        body["aliases"] = {alias: {}}
    client.indices.create(index=name, body=body)


def guard_versions(client: OpenSearch, alias: str) -> None:
    """Put (idempotently) the template that makes any `{alias}-vN` index not created by `create_index` (such as one
    a stale bulk would bring back after `cleanup`) born write-blocked and marked; see `template.guard_template`."""
    client.indices.put_index_template(name=guard_template_name(alias), body=guard_template(alias))


def is_orphan(client: OpenSearch, index: str) -> bool:
    """Whether `index` was created by a write under the alias's guard template, not by this package."""
    mapping = client.indices.get_mapping(index=index)
    return (mapping[index]["mappings"].get("_meta") or {}).get(ORPHAN_MARK) is True


def count_papers_and_chunks(client: OpenSearch, index: str) -> tuple[int, int]:
    """Papers in an index and the chunks they hold (the sum of their `chunk_count`)."""
    response = client.search(
        index=index, body={"size": 0, "track_total_hits": True, "aggs": {"chunks": {"sum": {"field": "chunk_count"}}}}
    )
    return int(response["hits"]["total"]["value"]), int(response["aggregations"]["chunks"]["value"] or 0)


def store_size(client: OpenSearch, index: str) -> int:
    """Bytes on disk of the index's primary shards."""
    stats = client.indices.stats(index=index, metric="store")
    return int(stats["_all"]["primaries"]["store"]["size_in_bytes"])


def put_search_pipeline(client: OpenSearch, name: str, body: dict[str, Any]) -> None:
    """Create or replace a search pipeline."""
    client.search_pipeline.put(id=name, body=body)


def set_write_block(client: OpenSearch, index: str, blocked: bool) -> None:
    """Block (or allow) writes to an index; reads go on. Writers get a 403 cluster_block_exception meanwhile."""
    client.indices.put_settings(index=index, body={"index": {"blocks": {"write": blocked}}})


def write_blocked(client: OpenSearch, index: str) -> bool:
    settings = client.indices.get_settings(index=index, name="index.blocks.write")
    return str(settings.get(index, {}).get("settings", {}).get("index", {}).get("blocks", {}).get("write")).lower() == "true"


def inherited_settings(client: OpenSearch, index: str) -> dict[str, Any]:
    """The settings a successor of `index` keeps: shards, replicas, refresh interval."""
    current = client.indices.get_settings(index=index)[index]["settings"]["index"]
    return {key: current[key] for key in ("number_of_shards", "number_of_replicas", "refresh_interval") if key in current}
