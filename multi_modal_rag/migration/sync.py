"""Bringing one index up to date with another: copy pages, change capture by `_seq_no`, and reconciliation.

Change capture does not read clocks: every write to a shard gets a higher `_seq_no`, and a shard's
local checkpoint says up to which `_seq_no` every write has been processed. A pass takes the
checkpoints first, refreshes, then copies every paper with `_seq_no` above the previous pass's
checkpoints; what is written meanwhile has a higher `_seq_no` and is found by the next pass.
Deletions leave nothing to find, so they are found by a sorted merge of the two indices' ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from opensearchpy import OpenSearch, helpers

from .. import store
from ..documents import SOURCE_FIELDS, Paper
from ..encoders import Encoder, embed_papers
from ..errors import MigrationError
from ..store import IndexSpec

BULK_BYTES = 10 * 1024 * 1024  # Amazon OpenSearch Service refuses request bodies over 10 MiB
BULK_RETRIES = 5


@dataclass
class Copier:
    """Writes papers (re-embedded with `encoder` for `spec`) and deletions into one index, with retries."""

    client: OpenSearch
    encoder: Encoder
    spec: IndexSpec
    index: str
    page_size: int = 128
    bulk_bytes: int = BULK_BYTES

    def __post_init__(self) -> None:
        # An index with a projection (--reduce-dim) is written through it, in whichever process copies.
        if (self.encoder.projection.id if self.encoder.projection else None) != self.spec.projection:
            projection = (store.load_projection(self.client, self.spec.projection, index=self.index)
                          if self.spec.projection else None)
            self.encoder.use_projection(projection)

    def write(self, sources: list[dict[str, Any]]) -> None:
        docs = embed_papers(self.encoder, [Paper.from_source(source) for source in sources], self.spec)
        self._bulk(({"_index": self.index, "_id": doc["paper_id"], "_source": doc} for doc in docs), "written to")

    def delete(self, ids: list[str]) -> None:
        self._bulk(({"_op_type": "delete", "_index": self.index, "_id": i} for i in ids), "deleted from")

    def _bulk(self, actions: Iterator[dict[str, Any]], verb: str) -> None:
        _, errors = helpers.bulk(self.client, actions, chunk_size=self.page_size, max_chunk_bytes=self.bulk_bytes,
                                 max_retries=BULK_RETRIES, initial_backoff=1, raise_on_error=False)
        failed = [e for e in errors if next(iter(e.values())).get("status") != 404]  # deleting what is gone is fine
        if failed:
            raise MigrationError(f"{len(failed)} papers could not be {verb} {self.index}: {str(failed[0])[:300]}")


def changed_since(client: OpenSearch, index: str, marks: dict[str, int], page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Pages of the papers written to `index` after `marks` (shard -> `_seq_no`), shard by shard."""
    for shard in sorted(store.shard_checkpoints(client, index), key=int):
        after: str | None = None
        while True:
            body: dict[str, Any] = {"size": page_size, "sort": [{"paper_id": "asc"}], "_source": SOURCE_FIELDS,
                                    "query": {"range": {"_seq_no": {"gt": marks.get(shard, -1)}}}}
            if after is not None:
                body["search_after"] = [after]
            hits = client.search(index=index, body=body, params={"preference": f"_shards:{shard}"})["hits"]["hits"]
            if not hits:
                break
            after = hits[-1]["sort"][0]
            yield [hit["_source"] for hit in hits]


def catch_up_pass(copier: Copier, source: str, marks: dict[str, int]) -> tuple[dict[str, int], int, int]:
    """One pass: copy what changed in `source` since `marks`, mirror deletions. Returns (new marks, copied, deleted)."""
    client = copier.client
    new_marks = store.shard_checkpoints(client, source)  # first the marks, then the refresh: nothing slips between
    client.indices.refresh(index=source)
    copied = 0
    for page in changed_since(client, source, marks, copier.page_size):
        fresh = _differing(client, copier.index, page)
        if fresh:
            copier.write(fresh)
            copied += len(fresh)
    extra = [doc_id for doc_id, kind in diff(client, source, copier.index, ids_only=True) if kind == "target only"]
    if extra:
        copier.delete(extra)
    return new_marks, copied, len(extra)


def _differing(client: OpenSearch, target: str, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The papers of `page` that `target` lacks or holds with other content."""
    response = client.mget(index=target, body={"ids": [d["paper_id"] for d in page]}, _source_includes=["content_hash"])
    stored = {d["_id"]: d["_source"].get("content_hash") for d in response["docs"] if d.get("found")}
    return [d for d in page if stored.get(d["paper_id"]) != content_hash(d)]


def content_hash(source: dict[str, Any]) -> str:
    """The content hash of an index document: as stored, or computed for a document written without one."""
    return source.get("content_hash") or Paper.from_source(source).content_hash()


@dataclass
class Differences:
    source_only: list[str] = field(default_factory=list)
    target_only: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    source_papers: int = 0
    expected_chunks: int = 0  # the chunks the source's papers make with the target's chunking

    def __bool__(self) -> bool:
        return bool(self.source_only or self.target_only or self.changed)

    def add(self, doc_id: str, kind: str) -> None:
        {"source only": self.source_only, "target only": self.target_only, "changed": self.changed}[kind].append(doc_id)

    def describe(self) -> str:
        parts = [f"{len(ids)} {what} (e.g. {', '.join(ids[:3])})" for what, ids in
                 (("only in the source", self.source_only), ("only in the target", self.target_only),
                  ("with other content", self.changed)) if ids]
        return "; ".join(parts)


def diff(
    client: OpenSearch, source: str, target: str, *, ids_only: bool = False,
    on_source: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[tuple[str, str]]:
    """(id, "source only" | "target only" | "changed") by a sorted merge of both indices: flat memory.

    `on_source` sees every source document on the way (to count what it should make in the target).
    """
    client.indices.refresh(index=f"{source},{target}")  # writes processed before now become visible to the scans
    fields = ["paper_id"] if ids_only else SOURCE_FIELDS
    left = (s for page in store.scan_sources(client, source, fields=fields, page_size=1000) for s in page)
    right_fields = ["paper_id"] if ids_only else ["paper_id", "content_hash"]
    right = (s for page in store.scan_sources(client, target, fields=right_fields, page_size=1000) for s in page)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if a is not None and on_source is not None and (b is None or a["paper_id"] <= b["paper_id"]):
            on_source(a)
        if b is None or (a is not None and a["paper_id"] < b["paper_id"]):
            yield a["paper_id"], "source only"
            a = next(left, None)
        elif a is None or b["paper_id"] < a["paper_id"]:
            yield b["paper_id"], "target only"
            b = next(right, None)
        else:
            if not ids_only and content_hash(a) != b.get("content_hash"):
                yield a["paper_id"], "changed"
            a, b = next(left, None), next(right, None)


def reconcile(copier: Copier, source: str) -> Differences:
    """Make `copier.index` hold exactly `source`'s papers and content (source must not be written meanwhile).

    Returns what had to be fixed, with the source's paper and expected chunk counts for verification.
    """
    found = Differences()

    def count(doc: dict[str, Any]) -> None:
        found.source_papers += 1
        found.expected_chunks += len(copier.encoder.chunk(Paper.from_source(doc), copier.spec))

    for doc_id, kind in diff(copier.client, source, copier.index, on_source=count):
        found.add(doc_id, kind)
    if found.target_only:
        copier.delete(found.target_only)
    to_copy = found.source_only + found.changed
    for start in range(0, len(to_copy), copier.page_size):
        ids = to_copy[start : start + copier.page_size]
        response = copier.client.mget(index=source, body={"ids": ids}, _source_includes=SOURCE_FIELDS)
        copier.write([d["_source"] for d in response["docs"] if d.get("found")])
    return found
