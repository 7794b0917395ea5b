"""Where `--reduce-dim` projections live: one document each in the `mmrag-projections` index, keyed by its id.

Not in the index `_meta`: a 384 -> 128 projection is ~50,000 numbers (~1 MB of JSON), and `_meta` is part of the
cluster state, which every node holds and the cluster manager republishes on every mapping change. The `_meta`
records only the projection's id (`IndexSpec.projection`); the id is a hash of the numbers, so a document is
written once, never changed, and checked against its id when read. The numbers are kept in `_source` only
(`dynamic: false`): nothing searches them.
"""

from __future__ import annotations

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError

from ..errors import IndexMismatchError
from ..projection import Projection

PROJECTIONS_INDEX = "mmrag-projections"
_BODY = {
    "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
    "mappings": {"dynamic": False, "properties": {
        "id": {"type": "keyword"}, "model": {"type": "keyword"},
        "input_dim": {"type": "integer"}, "output_dim": {"type": "integer"},
    }},
}


def save_projection(client: OpenSearch, projection: Projection) -> None:
    """Store `projection` (idempotent: the same id is the same numbers), visible to every reader on return."""
    if not client.indices.exists(index=PROJECTIONS_INDEX):
        client.indices.create(index=PROJECTIONS_INDEX, body=_BODY, params={"ignore": 400})  # 400: another process won
    client.index(index=PROJECTIONS_INDEX, id=projection.id, body=projection.to_dict(), params={"refresh": "wait_for"})


def load_projection(client: OpenSearch, projection_id: str, *, index: str | None = None) -> Projection:
    """The projection an index's `_meta` names; IndexMismatchError if it is gone, since nothing can embed for
    that index without it."""
    try:
        source = client.get(index=PROJECTIONS_INDEX, id=projection_id)["_source"]
    except NotFoundError:
        owner = f"Index {index!r} was" if index else "The index was"
        raise IndexMismatchError(
            f"{owner} built with the projection {projection_id} (--reduce-dim), but {PROJECTIONS_INDEX} has no such "
            "document: nothing can embed for it without one. Re-create the index, or migrate it from a copy of the papers."
        ) from None
    return Projection.from_dict(source)
