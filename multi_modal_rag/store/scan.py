"""Reading a whole index in pages: a point-in-time sorted by paper id, resumable after any page."""

from __future__ import annotations

import time
from typing import Any, Iterator

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError

from ..documents import SOURCE_FIELDS

KEEP_ALIVE = "5m"  # renewed by every page; a page slower than this re-opens the point-in-time
REOPEN_TRIES = 6  # a point-in-time lost with a node is re-opened (waiting 0.5, 1, 2, ... s for replicas to take over)


def scan_sources(
    client: OpenSearch,
    index: str,
    *,
    after: str | None = None,
    query: dict[str, Any] | None = None,
    fields: list[str] | None = None,
    page_size: int = 128,
    slice: tuple[int, int] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Pages of `_source` (default: the paper's stored fields) sorted by paper_id, starting after `after`.

    The point-in-time gives a consistent view while the index is written; a page's last paper_id is
    the checkpoint to pass as `after` to continue. `slice` (i, n): only slice i of n (by `_id`), for workers.
    """
    tries = 0

    def reopen(exc: TransportError) -> str:
        """A new point-in-time after a node holding part of the last one was lost (5xx), once replicas answer."""
        nonlocal tries
        while True:
            tries += 1
            if tries > REOPEN_TRIES or not isinstance(exc.status_code, int) or exc.status_code < 500:
                raise exc
            time.sleep(0.5 * 2 ** (tries - 1))
            try:
                return client.create_pit(index=index, params={"keep_alive": KEEP_ALIVE})["pit_id"]
            except TransportError as again:
                exc = again

    try:
        pit = client.create_pit(index=index, params={"keep_alive": KEEP_ALIVE})["pit_id"]
    except TransportError as exc:
        pit = reopen(exc)
    try:
        while True:
            body: dict[str, Any] = {
                "size": page_size,
                "query": query or {"match_all": {}},
                "sort": [{"paper_id": "asc"}],
                "pit": {"id": pit, "keep_alive": KEEP_ALIVE},
                "_source": fields or SOURCE_FIELDS,
            }
            if slice is not None:
                body["slice"] = {"id": slice[0], "max": slice[1]}
            if after is not None:
                body["search_after"] = [after]
            try:
                # never a partial page: a page missing a lost shard's papers would pass for their absence
                hits = client.search(body=body, params={"allow_partial_search_results": "false"})["hits"]["hits"]
            except NotFoundError:  # the point-in-time expired (a slow consumer): a new one continues after `after`
                pit = client.create_pit(index=index, params={"keep_alive": KEEP_ALIVE})["pit_id"]
                continue
            except TransportError as exc:  # a node holding part of it was lost: so does a new one, once replicas answer
                pit = reopen(exc)
                continue
            if not hits:
                return
            after = hits[-1]["sort"][0]
            yield [hit["_source"] for hit in hits]
    finally:
        try:
            client.delete_pit(body={"pit_id": [pit]})
        except TransportError:  # the node is gone or the pit expired: it lapses by itself
            pass
