"""Checks a new index must pass before the alias moves: counts, ids, chunking, vectors, canary queries."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
from opensearchpy import OpenSearch

from .. import store
from ..documents import Paper, chunk_paper
from ..encoders import Encoder
from ..search.queries import knn_query
from ..store import IndexSpec
from .state import MigrationState

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


def compare_ids(client: OpenSearch, source: str, target: str) -> Iterator[tuple[str, str]]:
    """(id, "source only" | "target only") for ids not in both, by a sorted merge: flat memory."""
    client.indices.refresh(index=target)
    left, right = store.scan_ids(client, source), store.scan_ids(client, target)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a < b):
            yield a, "source only"
            a = next(left, None)
        elif a is None or b < a:
            yield b, "target only"
            b = next(right, None)
        else:
            a, b = next(left, None), next(right, None)


def verify(client: OpenSearch, state: MigrationState, encoder: Encoder, spec: IndexSpec) -> VerificationReport:
    """Counts, ids, vector dimension and norm, canary queries: all must pass before the swap."""
    client.indices.put_settings(index=state.target_index, body={"index": {"refresh_interval": "1s"}})
    client.indices.refresh(index=state.target_index)
    client.indices.refresh(index=state.source_index)
    source_counts = store.count_papers_and_chunks(client, state.source_index)
    target_counts = store.count_papers_and_chunks(client, state.target_index)
    problems: list[str] = []
    if source_counts[0] != target_counts[0]:
        problems.append(f"document count differs: source {source_counts[0]}, target {target_counts[0]}")
    missing = list(compare_ids(client, state.source_index, state.target_index))
    if missing:
        sample = ", ".join(f"{i} ({w})" for i, w in missing[:5])
        problems.append(f"{len(missing)} ids not in both indices, e.g. {sample}")
    expected_chunks = _expected_chunks(client, state.source_index, spec)
    if target_counts[1] != expected_chunks:
        problems.append(f"chunk count differs: expected {expected_chunks}, target has {target_counts[1]}")
    checked, vector_problems = _check_stored_vectors(client, state.target_index, spec)
    canaries_ok, canary_problems = _canaries(client, state, encoder)
    problems += vector_problems + canary_problems
    return VerificationReport(
        ok=not problems, problems=problems, source_documents=source_counts[0], target_documents=target_counts[0],
        source_chunks=source_counts[1], target_chunks=target_counts[1], expected_chunks=expected_chunks,
        vectors_checked=checked, canaries_ok=canaries_ok,
    )


def _expected_chunks(client: OpenSearch, source_index: str, spec: IndexSpec) -> int:
    total = 0
    for page in store.scan_sources(client, source_index, fields=["title", "abstract", "content"]):
        total += sum(len(chunk_paper(Paper.from_source(s), spec.chunk_words, spec.chunk_overlap)) for s in page)
    return total


def _check_stored_vectors(client: OpenSearch, index: str, spec: IndexSpec) -> tuple[int, list[str]]:
    """A random sample of stored paper and chunk vectors: the spec's dimension, unit length when normalized."""
    body = {"size": VECTOR_SAMPLE, "query": {"function_score": {"random_score": {"seed": 7, "field": "_seq_no"}}},
            "_source": ["embedding", "chunks.embedding"]}
    problems, checked = [], 0
    for hit in client.search(index=index, body=body)["hits"]["hits"]:
        vectors = [hit["_source"].get("embedding")] + [c.get("embedding") for c in hit["_source"].get("chunks", [])]
        for vector in vectors:
            checked += 1
            if vector is None or len(vector) != spec.dimension:
                problems.append(f"paper {hit['_id']}: a vector has {len(vector or [])} dimensions, expected {spec.dimension}")
                break
            if spec.normalized and abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                problems.append(f"paper {hit['_id']}: a vector is not unit length")
                break
    return checked, problems[:5]


def _canaries(client: OpenSearch, state: MigrationState, encoder: Encoder) -> tuple[int, list[str]]:
    """A few titles from the source, searched by kNN in the target: each must return results."""
    body = {"size": CANARY_QUERIES, "query": {"function_score": {"random_score": {"seed": 11, "field": "_seq_no"}}},
            "_source": ["title", "abstract"]}
    ok, problems = 0, []
    for hit in client.search(index=state.source_index, body=body)["hits"]["hits"]:
        text = hit["_source"].get("title") or hit["_source"].get("abstract", "")[:200]
        if not text.strip():
            continue
        vector = encoder.encode_queries([text])[0]
        found = client.search(index=state.target_index, body={"size": 10, "_source": False,
                                                              "query": knn_query(vector, 10, target="paper")})
        if found["hits"]["hits"]:
            ok += 1
        else:
            problems.append(f"canary query {text[:60]!r} returned nothing")
    return ok, problems
