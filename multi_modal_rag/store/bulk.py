"""Bulk requests, and which refusals of a bulk item are a migration's write block.

A write block on an index answers every write with a `cluster_block_exception` whose reason lists the blocks:
`index [papers-v1] blocked by: [FORBIDDEN/8/index write (api)];`. The migration's hand-over (settings
`index.blocks.write` or the add-index-block API, `PUT /INDEX/_block/write`, which says "moving to block index
write (api)" until every shard has it) is that block alone; it ends within seconds, so writers wait it out.
Any other block stays until someone acts (a disk at the flood-stage watermark: `TOO_MANY_REQUESTS/12/disk usage
exceeded flood-stage watermark, index has read-only-allow-delete block`; `index.blocks.read_only`: `FORBIDDEN/5/index
read-only (api)`; a cluster-wide `cluster.blocks.read_only`: `FORBIDDEN/6/cluster read-only (api)`), so a write it
refuses fails at once, naming the block.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Iterator

from opensearchpy import OpenSearch, helpers

MIGRATION_BLOCK = "index write (api)"
# STATUS/ID/description, descriptions may hold commas: each ends where the next block or the list ends.
_BLOCK = re.compile(r"[A-Z_]+/\d+/(.*?)(?=, [A-Z_]+/\d+/|\];|\]$)")


def blocks_of(error: Any) -> list[str]:
    """The descriptions of the blocks that refused a bulk item (its `error`), or [] if no block refused it."""
    if isinstance(error, dict):
        if error.get("type") != "cluster_block_exception":
            return []
        text = str(error.get("reason", ""))
    else:
        text = str(error or "")
        if "cluster_block_exception" not in text:
            return []
    return [description.strip() for description in _BLOCK.findall(text)] or [text[:200]]


def is_migration_block(error: Any) -> bool:
    """Whether only the migration's write block refused the item (so it is worth waiting for)."""
    blocks = blocks_of(error)
    return bool(blocks) and all(description.endswith(MIGRATION_BLOCK) for description in blocks)


def item_reason(info: dict[str, Any]) -> str:
    """Why a bulk item failed, from its response item; a block other than the migration's is named as such."""
    error = info.get("error") or info.get("exception") or info
    blocks = blocks_of(error)
    if blocks and not is_migration_block(error):
        return f"refused by a block other than a migration's hand-over, not retried: {'; '.join(blocks)}"[:500]
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"[:500]
    return str(error)[:500]


def streaming_bulk(client: OpenSearch, actions: Iterable[dict[str, Any]], *, chunk_size: int = 500,
                   max_chunk_bytes: int = 100 * 1024 * 1024, max_retries: int = 0,
                   initial_backoff: float = 1.0) -> Iterator[tuple[bool, dict[str, Any]]]:
    """opensearch-py's `streaming_bulk` (one (ok, item) per action, errors reported, not raised; a chunk's 429s
    retried with backoff before the next chunk goes), except that a 429 that is a block is not retried: a
    flood-stage block answers 429 too, and would be retried for `initial_backoff * 2**max_retries` seconds."""
    for chunk in _chunks(client, actions, chunk_size, max_chunk_bytes):
        for attempt in range(max_retries + 1):
            if attempt:
                time.sleep(min(600.0, initial_backoff * 2 ** (attempt - 1)))
            retry = []
            answers = helpers.streaming_bulk(client, chunk, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes,
                                             raise_on_error=False, raise_on_exception=False, yield_ok=True)
            for action, (ok, item) in zip(chunk, answers):
                info = next(iter(item.values()))
                if not ok and info.get("status") == 429 and not blocks_of(info.get("error")) and attempt < max_retries:
                    retry.append(action)
                else:
                    yield ok, item
            if not retry:
                break
            chunk = retry


def _chunks(client: OpenSearch, actions: Iterable[dict[str, Any]], size: int,
            max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Actions in the chunks opensearch-py would send them in (at most `size` actions and `max_bytes` bytes)."""
    dumps = client.transport.serializer.dumps
    chunk: list[dict[str, Any]] = []
    chunk_bytes = 0
    for action in actions:
        line, data = helpers.expand_action(action)
        cost = len(dumps(line).encode("utf-8")) + 1 + (len(dumps(data).encode("utf-8")) + 1 if data is not None else 0)
        if chunk and (len(chunk) >= size or chunk_bytes + cost > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(action)
        chunk_bytes += cost
    if chunk:
        yield chunk
