"""Where each shard's writes stand, read from its primary copy: sequence numbers, primary terms, and a
write block that drains the writes in flight.

A shard's `_seq_no`s are only comparable while its primary term stays the same: after a failover the
new primary may hand out numbers the old one had already used. So every mark taken here comes with
the terms it was taken under (`primary_terms`), and a reader of marks re-scans a shard whose term moved.
"""

from __future__ import annotations

import time
from typing import Any

from opensearchpy import OpenSearch

from ..errors import MMRagError

DRAIN_SECONDS = 30.0  # how long a block may wait for writes in flight to finish on every shard


def _primaries(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    """Shard -> the `seq_no` stats of its primary copy; a shard without a started primary is an error."""
    stats = client.indices.stats(index=index, level="shards", metric="docs")
    shards = stats["indices"].get(index, {}).get("shards", {})  # (absent while no copy has started)
    primaries = {}
    for number, copies in shards.items():
        primary = next((c for c in copies if c["routing"]["primary"] and c["routing"]["state"] == "STARTED"), None)
        if primary is None:
            raise MMRagError(f"Shard {number} of {index} has no started primary (unassigned or recovering); "
                             "its writes cannot be accounted for. Wait for the cluster to recover it, then run again.")
        primaries[number] = primary["seq_no"]
    missing = set(map(str, range(_shard_count(client, index)))) - set(primaries)
    if missing:
        raise MMRagError(f"Shard(s) {', '.join(sorted(missing, key=int))} of {index} have no started primary; "
                         "wait for the cluster to recover them, then run again.")
    return primaries


def _shard_count(client: OpenSearch, index: str) -> int:
    settings = client.indices.get_settings(index=index, name="index.number_of_shards")
    return int(settings[index]["settings"]["index"]["number_of_shards"])


def shard_checkpoints(client: OpenSearch, index: str) -> dict[str, int]:
    """Primary shard -> local checkpoint: every write with a `_seq_no` up to it has been processed."""
    return {number: seq["local_checkpoint"] for number, seq in _primaries(client, index).items()}


def primary_terms(client: OpenSearch, index: str) -> dict[str, int]:
    """Shard -> its current primary term (it grows at every failover)."""
    state = client.cluster.state(metric="metadata", index=index,
                                 params={"filter_path": f"metadata.indices.{index}.primary_terms"})
    return {str(k): int(v) for k, v in state["metadata"]["indices"][index]["primary_terms"].items()}


def in_flight(client: OpenSearch, index: str) -> dict[str, int]:
    """Shard -> writes handed a `_seq_no` but not yet processed (max_seq_no - local checkpoint)."""
    return {number: seq["max_seq_no"] - seq["local_checkpoint"] for number, seq in _primaries(client, index).items()}


def block_writes(client: OpenSearch, index: str) -> dict[str, int]:
    """Block writes to `index` and return its checkpoints once nothing is in flight.

    The add-index-block API returns only after every shard has finished the writes that had passed the
    block check (unlike `index.blocks.write` through the settings API, checked once per shard-level bulk);
    the checkpoints are then confirmed on every primary. Idempotent.
    """
    client.indices.add_block(index=index, block="write")
    deadline = time.monotonic() + DRAIN_SECONDS
    while any(in_flight(client, index).values()):
        if time.monotonic() > deadline:
            raise MMRagError(f"Writes to {index} were still in flight {DRAIN_SECONDS:.0f} s after it was blocked.")
        time.sleep(0.05)
    return shard_checkpoints(client, index)

