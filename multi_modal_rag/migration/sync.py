"""Bringing one index up to date with another: copy pages, change capture by `_seq_no`, and reconciliation.

Change capture does not read clocks: every write to a shard gets a higher `_seq_no`, and a shard's
local checkpoint says up to which `_seq_no` every write has been processed. A pass takes the
checkpoints (and primary terms) first, refreshes, then copies every paper with `_seq_no` above the
previous pass's checkpoints, read from the primaries; what is written meanwhile has a higher `_seq_no`
and is found by the next pass. A shard whose primary term moved (a failover may reuse numbers) is
read whole again. Deletions leave nothing to find, so they are found by a sorted merge of the ids.
Content is compared by a hash recomputed from the source's fields, never the stored one: a partial
`_update` changes the fields and keeps the stored hash.

Every write into the other index is conditional on what was read of it (`if_seq_no`/`if_primary_term`,
or `create` for a paper found absent), and goes through `Copier.fence` when one is given: an alias
that only the lease holder's run has on the new index (`require_alias`), removed when another process
takes over. So a stale process can neither overwrite a newer write nor write at all once fenced off.
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
    fence: str | None = None  # the alias to write through (None: the index itself, e.g. a rollback's old index)
    superseded: int = 0  # conditional writes that found a newer version there (and left it)

    def __post_init__(self) -> None:
        # An index with a projection (--reduce-dim) is written through it, in whichever process copies.
        if (self.encoder.projection.id if self.encoder.projection else None) != self.spec.projection:
            projection = (store.load_projection(self.client, self.spec.projection, index=self.index)
                          if self.spec.projection else None)
            self.encoder.use_projection(projection)

    def versions(self, ids: list[str]) -> Versions:
        """What this index holds of `ids`: id -> (content hash, `_seq_no`, `_primary_term`); absent ids left out."""
        response = self.client.mget(index=self.index, body={"ids": ids}, _source_includes=["content_hash"])
        return {d["_id"]: (d["_source"].get("content_hash"), d["_seq_no"], d["_primary_term"])
                for d in response["docs"] if d.get("found")}

    def write(self, sources: list[dict[str, Any]], versions: Versions) -> None:
        """Embed and write papers, each conditional on the version `versions` says this index held when read."""
        docs = embed_papers(self.encoder, [Paper.from_source(source) for source in sources], self.spec)
        self._bulk((_conditional({"_index": self.fence or self.index, "_id": doc["paper_id"], "_source": doc},
                                 versions.get(doc["paper_id"])) for doc in docs), "written to")

    def delete(self, ids: list[str], versions: Versions) -> None:
        """Delete papers, each conditional on the version read (ids found absent need nothing)."""
        self._bulk(({"_op_type": "delete", "_index": self.fence or self.index, "_id": i,
                     "if_seq_no": versions[i][1], "if_primary_term": versions[i][2]} for i in ids if i in versions),
                   "deleted from")

    def _bulk(self, actions: Iterator[dict[str, Any]], verb: str) -> None:
        options = {"require_alias": "true"} if self.fence else {}
        _, errors = helpers.bulk(self.client, actions, chunk_size=self.page_size, max_chunk_bytes=self.bulk_bytes,
                                 max_retries=BULK_RETRIES, initial_backoff=1, raise_on_error=False, params=options)
        failed = []
        for error in errors:
            info = next(iter(error.values()))
            if info.get("status") == 409:  # a newer write is there: it wins
                self.superseded += 1
            elif info.get("status") != 404 or "index_not_found" in str(info.get("error")):  # a gone paper is fine
                failed.append(error)
        if failed:
            fenced = self.fence and any("require_alias" in str(e) for e in failed)
            if fenced:
                raise MigrationError(f"This run was fenced off {self.index} ({self.fence} is gone): another process "
                                     "took the migration over; nothing more is written.")
            raise MigrationError(f"{len(failed)} papers could not be {verb} {self.index}: {str(failed[0])[:300]}")


Versions = dict[str, tuple[str | None, int, int]]


def _conditional(action: dict[str, Any], version: tuple[str | None, int, int] | None) -> dict[str, Any]:
    if version is None:
        return {**action, "_op_type": "create"}
    return {**action, "if_seq_no": version[1], "if_primary_term": version[2]}


def changed_since(client: OpenSearch, index: str, marks: dict[str, int], page_size: int, *,
                  rescan: set[str] = frozenset()) -> Iterator[list[dict[str, Any]]]:
    """Pages of the papers written to `index` after `marks` (shard -> `_seq_no`), shard by shard, from the
    primaries (a replica may not have applied them yet); the shards in `rescan` whole."""
    for shard in sorted(store.shard_checkpoints(client, index), key=int):
        after: str | None = None
        since = -1 if shard in rescan else marks.get(shard, -1)
        while True:
            body: dict[str, Any] = {"size": page_size, "sort": [{"paper_id": "asc"}], "_source": SOURCE_FIELDS,
                                    "query": {"range": {"_seq_no": {"gt": since}}}}
            if after is not None:
                body["search_after"] = [after]
            hits = client.search(index=index, body=body, params={"preference": f"_shards:{shard}|_primary"})["hits"]["hits"]
            if not hits:
                break
            after = hits[-1]["sort"][0]
            yield [hit["_source"] for hit in hits]


def moved_terms(client: OpenSearch, index: str, terms: dict[str, int]) -> tuple[dict[str, int], set[str]]:
    """The current primary terms, and the shards whose term moved since `terms` (to re-scan whole)."""
    current = store.primary_terms(client, index)
    return current, {shard for shard, term in current.items() if terms and terms.get(shard) != term}


def copy_changed(copier: Copier, sources: list[dict[str, Any]]) -> int:
    """Write the papers of `sources` that the copier's index lacks or holds with other content; how many."""
    fresh, versions = _differing(copier, sources)
    if fresh:
        copier.write(fresh, versions)
    return len(fresh)


def catch_up_pass(copier: Copier, source: str, marks: dict[str, int],
                  terms: dict[str, int]) -> tuple[dict[str, int], dict[str, int], int, int]:
    """One pass: copy what changed in `source` since `marks`, mirror deletions.
    Returns (new marks, their terms, copied, deleted)."""
    client = copier.client
    new_terms, rescan = moved_terms(client, source, terms)
    new_marks = store.shard_checkpoints(client, source)  # first the marks, then the refresh: nothing slips between
    client.indices.refresh(index=source)
    copied = sum(copy_changed(copier, page) for page in changed_since(client, source, marks, copier.page_size,
                                                                      rescan=rescan))
    extra = [doc_id for doc_id, kind in diff(client, source, copier.index, ids_only=True) if kind == "target only"]
    if extra:
        copier.delete(extra, copier.versions(extra))
    return new_marks, new_terms, copied, len(extra)


def _differing(copier: Copier, page: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Versions]:
    """The papers of `page` that the copier's index lacks or holds with other content, and what it holds."""
    held = copier.versions([d["paper_id"] for d in page])
    return [d for d in page if held.get(d["paper_id"], (None,))[0] != content_hash(d)], held


def content_hash(source: dict[str, Any]) -> str:
    """The content hash of a source document, computed from its fields (a partial update keeps the stored one)."""
    return Paper.from_source(source).content_hash()


BUCKET_PAPERS = 1000  # papers per paper-id range in the hand-over's count check (`settle`)
MAX_BUCKETS = 1000


@dataclass
class Differences:
    source_only: list[str] = field(default_factory=list)
    target_only: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    source_papers: int = 0

    def __bool__(self) -> bool:
        return bool(self.source_only or self.target_only or self.changed)

    def add(self, doc_id: str, kind: str) -> None:
        {"source only": self.source_only, "target only": self.target_only, "changed": self.changed}[kind].append(doc_id)

    def merge(self, other: "Differences") -> None:
        self.source_only += other.source_only
        self.target_only += other.target_only
        self.changed += other.changed

    def describe(self) -> str:
        parts = [f"{len(ids)} {what} (e.g. {', '.join(ids[:3])})" for what, ids in
                 (("only in the source", self.source_only), ("only in the target", self.target_only),
                  ("with other content", self.changed)) if ids]
        return "; ".join(parts)


def diff(
    client: OpenSearch, source: str, target: str, *, ids_only: bool = False, query: dict[str, Any] | None = None,
    on_source: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[tuple[str, str]]:
    """(id, "source only" | "target only" | "changed") by a sorted merge of both indices (within `query`): flat memory.

    `on_source` sees every source document on the way.
    """
    client.indices.refresh(index=f"{source},{target}")  # writes processed before now become visible to the scans
    fields = ["paper_id"] if ids_only else SOURCE_FIELDS
    left = (s for page in store.scan_sources(client, source, fields=fields, query=query, page_size=1000) for s in page)
    right_fields = ["paper_id"] if ids_only else ["paper_id", "content_hash"]
    right = (s for page in store.scan_sources(client, target, fields=right_fields, query=query, page_size=1000)
             for s in page)
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


def reconcile(copier: Copier, source: str, *, query: dict[str, Any] | None = None,
              on_source: Callable[[dict[str, Any]], None] | None = None) -> Differences:
    """Make `copier.index` hold exactly `source`'s papers and content (within `query`); returns what it fixed.

    Exact when `source` is not written meanwhile; otherwise exact for the view its scan had.
    """
    found = Differences()
    for doc_id, kind in diff(copier.client, source, copier.index, query=query, on_source=on_source):
        found.add(doc_id, kind)
    if found.target_only:
        copier.delete(found.target_only, copier.versions(found.target_only))
    to_copy = found.source_only + found.changed
    for start in range(0, len(to_copy), copier.page_size):
        ids = to_copy[start : start + copier.page_size]
        response = copier.client.mget(index=source, body={"ids": ids}, _source_includes=SOURCE_FIELDS)
        copier.write([d["_source"] for d in response["docs"] if d.get("found")], copier.versions(ids))
    return found


@dataclass
class Prepared:
    """What `prepare` left for `settle`: the marks taken before its scan, and paper ids cutting the source into ranges."""

    marks: dict[str, int]
    terms: dict[str, int]
    buckets: list[str]
    fixed: Differences


def prepare(copier: Copier, source: str) -> Prepared:
    """The whole-index reconciliation, done while writes go on; `settle` later needs only what changed since."""
    client = copier.client
    terms = store.primary_terms(client, source)
    marks = store.shard_checkpoints(client, source)  # before the scan's refresh: later writes are above them
    seen: list[int] = [0]
    cuts: list[str] = []

    def cut(doc: dict[str, Any]) -> None:
        seen[0] += 1
        if seen[0] % BUCKET_PAPERS == 0:
            cuts.append(doc["paper_id"])

    fixed = reconcile(copier, source, on_source=cut)
    step = -(-len(cuts) // MAX_BUCKETS)  # at most MAX_BUCKETS ranges, whatever the size
    return Prepared(marks, terms, cuts[step - 1 :: step] if cuts else [], fixed)


def settle(copier: Copier, source: str, prepared: Prepared) -> Differences:
    """Under the write block: bring the new index from `prepare`'s state to the frozen source's, in work that
    grows with the changes since `prepare`, not with the index.

    Changed and new papers are those above the marks (from the primaries; a shard whose term moved is read
    whole). After copying them the new index holds every source paper, so it differs from the source only by
    papers deleted since: a range of paper ids whose counts differ holds them, and only such ranges are merged.
    """
    client = copier.client
    _, rescan = moved_terms(client, source, prepared.terms)
    client.indices.refresh(index=source)
    found = Differences()
    for page in changed_since(client, source, prepared.marks, copier.page_size, rescan=rescan):
        fresh, versions = _differing(copier, page)
        for doc in fresh:
            found.add(doc["paper_id"], "changed" if doc["paper_id"] in versions else "source only")
        if fresh:
            copier.write(fresh, versions)
    for query in uneven_ranges(client, source, copier.index, prepared.buckets):
        found.merge(reconcile(copier, source, query=query))
    found.source_papers = store.count_papers_and_chunks(client, source)[0]
    return found


def _ranges(buckets: list[str]) -> list[dict[str, Any]]:
    bounds = [None, *buckets, None]
    return [{"range": {"paper_id": {k: v for k, v in (("gte", low), ("lt", high)) if v is not None}}}
            if (low or high) else {"match_all": {}} for low, high in zip(bounds, bounds[1:])]


def uneven_ranges(client: OpenSearch, source: str, target: str, buckets: list[str]) -> list[dict[str, Any]]:
    """The paper-id ranges (queries) in which `source` and `target` hold different numbers of papers."""
    ranges = _ranges(buckets)
    body = {"size": 0, "aggs": {"ranges": {"filters": {"filters": {str(i): q for i, q in enumerate(ranges)}}}}}
    client.indices.refresh(index=target)
    counts = [client.search(index=index, body=body)["aggregations"]["ranges"]["buckets"] for index in (source, target)]
    return [q for i, q in enumerate(ranges) if counts[0][str(i)]["doc_count"] != counts[1][str(i)]["doc_count"]]
