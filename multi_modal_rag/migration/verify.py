"""Checks a new index must pass before the alias moves.

`check_target` runs before the hand-over, while writes go on: a sample of stored vectors (model,
dimension, norm) and canary queries that must find their own paper. `verify` runs during the
hand-over, on the frozen old index and the reconciled new one: paper counts, chunk counts, and
every paper the reconciliation fixed read back with the source's content hash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from opensearchpy import OpenSearch

from .. import store
from ..documents import SOURCE_FIELDS
from ..encoders import Encoder
from ..store import IndexSpec
from .canaries import run_canaries as _canaries
from .sync import Differences, content_hash

VECTOR_SAMPLE = 200


@dataclass
class TargetCheck:
    vectors_checked: int = 0
    canaries_ok: int = 0
    problems: list[str] = field(default_factory=list)
    canaries_run: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. fewer canaries, too few distinctive titles


@dataclass
class VerificationReport:
    ok: bool
    problems: list[str]
    source_documents: int
    target_documents: int
    source_chunks: int
    target_chunks: int
    expected_chunks: int
    repaired: int
    vectors_checked: int
    canaries_ok: int
    canaries_run: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_target(client: OpenSearch, target: str, encoder: Encoder, spec: IndexSpec) -> TargetCheck:
    """Stored vectors and canary queries of the new index."""
    client.indices.refresh(index=target)
    checked, problems = _check_stored_vectors(client, target, spec)
    canaries = _canaries(client, target, encoder)
    return TargetCheck(checked, canaries.ok, problems + canaries.problems, canaries.run, canaries.notes)


def verify(client: OpenSearch, source: str, target: str, fixed: Differences, checked: TargetCheck) -> VerificationReport:
    """After `settle` on a frozen source: paper counts, each paper's chunks stored, and the repaired papers
    read back with the source's content; work that grows with the repairs, not with the index."""
    client.indices.refresh(index=f"{source},{target}")
    source_counts = store.count_papers_and_chunks(client, source)
    target_counts = store.count_papers_and_chunks(client, target)
    problems = list(checked.problems)
    if source_counts[0] != target_counts[0] or fixed.source_papers != target_counts[0]:
        problems.append(f"document count differs: source {source_counts[0]}, target {target_counts[0]}")
    stored_chunks = _stored_chunks(client, target)
    if target_counts[1] != stored_chunks:
        problems.append(f"chunk count differs: the papers name {target_counts[1]} chunks, the index holds {stored_chunks}")
    problems += _recheck(client, source, target, fixed)
    return VerificationReport(
        ok=not problems, problems=problems, source_documents=source_counts[0], target_documents=target_counts[0],
        source_chunks=source_counts[1], target_chunks=target_counts[1], expected_chunks=stored_chunks,
        repaired=len(fixed.source_only) + len(fixed.changed) + len(fixed.target_only),
        vectors_checked=checked.vectors_checked, canaries_ok=checked.canaries_ok,
        canaries_run=checked.canaries_run, notes=checked.notes,
    )


def _stored_chunks(client: OpenSearch, index: str) -> int:
    """Chunk documents the index holds (every paper's `chunk_count` must add up to it)."""
    body = {"size": 0, "aggs": {"chunks": {"nested": {"path": "chunks"}}}}
    return int(client.search(index=index, body=body)["aggregations"]["chunks"]["doc_count"])


def _recheck(client: OpenSearch, source: str, target: str, fixed: Differences) -> list[str]:
    """The papers the reconciliation copied hold the source's content now; the ones it deleted are gone."""
    problems = []
    copied = fixed.source_only + fixed.changed
    for start in range(0, len(copied), 500):
        ids = copied[start : start + 500]
        wanted = {d["_id"]: content_hash(d["_source"]) for d in
                  client.mget(index=source, body={"ids": ids}, _source_includes=SOURCE_FIELDS)["docs"] if d.get("found")}
        got = {d["_id"]: d["_source"].get("content_hash") for d in
               client.mget(index=target, body={"ids": ids}, _source_includes=["content_hash"])["docs"] if d.get("found")}
        problems += [f"paper {i}: not repaired" for i in ids if wanted.get(i) != got.get(i)]
    if fixed.target_only:
        response = client.mget(index=target, body={"ids": fixed.target_only[:1000]}, _source=False)
        problems += [f"paper {d['_id']}: deleted in the source, still in the target" for d in response["docs"] if d.get("found")]
    return problems[:5]


def _check_stored_vectors(client: OpenSearch, index: str, spec: IndexSpec) -> tuple[int, list[str]]:
    """A random sample of papers: written by the spec's model, vectors of its dimension, unit length when normalized."""
    body = {"size": VECTOR_SAMPLE, "query": {"function_score": {"random_score": {"seed": 7, "field": "_seq_no"}}},
            "_source": ["model", "embedding", "chunks.embedding"]}
    problems, checked = [], 0
    for hit in client.search(index=index, body=body)["hits"]["hits"]:
        source = hit["_source"]
        if source.get("model") != spec.model:
            problems.append(f"paper {hit['_id']}: embedded by {source.get('model')!r}, expected {spec.model!r}")
            continue
        for vector in [source.get("embedding")] + [c.get("embedding") for c in source.get("chunks", [])]:
            checked += 1
            if vector is None or len(vector) != spec.dimension:
                problems.append(f"paper {hit['_id']}: a vector has {len(vector or [])} dimensions, expected {spec.dimension}")
                break
            if spec.normalized and abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                problems.append(f"paper {hit['_id']}: a vector is not unit length")
                break
    return checked, problems[:5]
