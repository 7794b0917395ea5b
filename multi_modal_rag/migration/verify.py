"""Checks a new index must pass before the alias moves: counts, ids and content, chunking, vectors, canaries.

Verification runs while the old index is write-blocked, so what it compares holds still.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from opensearchpy import OpenSearch

from .. import store
from ..documents import Paper, chunk_paper
from ..encoders import Encoder
from ..search.queries import knn_query
from ..store import IndexSpec
from .sync import Differences, diff

CANARY_QUERIES = 5
VECTOR_SAMPLE = 200


@dataclass
class VerificationReport:
    ok: bool
    problems: list[str]
    source_documents: int
    target_documents: int
    source_chunks: int
    target_chunks: int
    expected_chunks: int
    vectors_checked: int
    canaries_ok: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(client: OpenSearch, source: str, target: str, encoder: Encoder, spec: IndexSpec) -> VerificationReport:
    """Counts, ids and content hashes, chunk counts, a sample of vectors, canary queries: all must pass."""
    client.indices.refresh(index=target)
    client.indices.refresh(index=source)
    source_counts = store.count_papers_and_chunks(client, source)
    target_counts = store.count_papers_and_chunks(client, target)
    problems: list[str] = []
    if source_counts[0] != target_counts[0]:
        problems.append(f"document count differs: source {source_counts[0]}, target {target_counts[0]}")
    found = Differences()
    for doc_id, kind in diff(client, source, target):
        {"source only": found.source_only, "target only": found.target_only, "changed": found.changed}[kind].append(doc_id)
    if found:
        problems.append(f"papers differ: {found.describe()}")
    expected_chunks = _expected_chunks(client, source, spec)
    if target_counts[1] != expected_chunks:
        problems.append(f"chunk count differs: expected {expected_chunks}, target has {target_counts[1]}")
    checked, vector_problems = _check_stored_vectors(client, target, spec)
    canaries_ok, canary_problems = _canaries(client, source, target, encoder)
    problems += vector_problems + canary_problems
    return VerificationReport(
        ok=not problems, problems=problems, source_documents=source_counts[0], target_documents=target_counts[0],
        source_chunks=source_counts[1], target_chunks=target_counts[1], expected_chunks=expected_chunks,
        vectors_checked=checked, canaries_ok=canaries_ok,
    )


def _expected_chunks(client: OpenSearch, source_index: str, spec: IndexSpec) -> int:
    total = 0
    for page in store.scan_sources(client, source_index, fields=["title", "abstract", "content"], page_size=500):
        total += sum(len(chunk_paper(Paper.from_source(s), spec.chunk_words, spec.chunk_overlap)) for s in page)
    return total


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


def _canaries(client: OpenSearch, source: str, target: str, encoder: Encoder) -> tuple[int, list[str]]:
    """A few titles from the source, searched by kNN in the target: each must find its own paper in the top 10."""
    body = {"size": CANARY_QUERIES, "query": {"function_score": {"random_score": {"seed": 11, "field": "_seq_no"}}},
            "_source": ["title", "abstract"]}
    ok, problems = 0, []
    for hit in client.search(index=source, body=body)["hits"]["hits"]:
        text = hit["_source"].get("title") or hit["_source"].get("abstract", "")[:200]
        if not text.strip():
            continue
        vector = encoder.encode_queries([text])[0]
        found = client.search(index=target, body={"size": 10, "_source": False, "query": knn_query(vector, 10, target="paper")})
        if hit["_id"] in [h["_id"] for h in found["hits"]["hits"]]:
            ok += 1
        else:
            problems.append(f"canary query {text[:60]!r} did not find its paper {hit['_id']} in the top 10")
    return ok, problems
