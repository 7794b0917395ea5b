"""Canary queries: titles of the new index's papers, searched by kNN there, must each find their own paper.

A canary catches an index whose vectors do not answer the encoder's queries (another model, a broken
rotation or projection). It must not fail a correct index, so only distinctive titles make canaries: one that
many other papers share ("Erratum", "Editorial", "Correction to ...", "Proceedings 12", generated titles
differing in a number) can rightly rank those others first. A title is distinctive when, numbers aside, it has
at least MIN_WORDS words and at most MAX_SHARING papers (itself included) have 3/4 of those words in their
title. Numbers are left out because embedding models hardly tell "Report 17" from "Report 18".

The candidates (CANDIDATE_FACTOR x CANARY_QUERIES, seeded) come from the new index, so a paper written after
the last catch-up pass cannot fail them. With too few distinctive titles fewer canaries run, and the note says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from opensearchpy import OpenSearch

from ..encoders import Encoder
from ..errors import MigrationError
from ..search.queries import knn_query

CANARY_QUERIES = 5
CANDIDATE_FACTOR = 4
MIN_WORDS = 3
MAX_SHARING = 3
TOP = 10
_NUMBER = re.compile(r"\b\d[\d.,:/-]*\b")
_WORD = re.compile(r"[^\W\d_]{2,}")


@dataclass
class CanaryResult:
    run: int = 0
    ok: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_canaries(client: OpenSearch, target: str, encoder: Encoder) -> CanaryResult:
    """Up to CANARY_QUERIES distinctive titles of `target`, each searched by kNN: its paper must be in the top 10."""
    body = {"size": CANARY_QUERIES * CANDIDATE_FACTOR, "_source": ["title", "abstract"],
            "query": {"function_score": {"random_score": {"seed": 11, "field": "_seq_no"}}}}
    candidates = [(hit["_id"], *_query_text(hit["_source"])) for hit in client.search(index=target, body=body)["hits"]["hits"]]
    canaries = _distinctive(client, target, candidates)[:CANARY_QUERIES]
    result = CanaryResult(run=len(canaries))
    if len(canaries) < CANARY_QUERIES:
        result.notes.append(f"{len(canaries)} canary queries, not {CANARY_QUERIES}: only {len(canaries)} of "
                            f"{len(candidates)} sampled papers have a title distinctive in the index")
    if not canaries:
        return result
    vectors = encoder.encode_queries([text for _, text, _ in canaries])
    for (paper_id, text, _), vector in zip(canaries, vectors):
        found = client.search(index=target, body={"size": TOP, "_source": False, "query": knn_query(vector, TOP, target="paper")})
        if paper_id in [h["_id"] for h in found["hits"]["hits"]]:
            result.ok += 1
        else:
            result.problems.append(f"canary query {text[:60]!r} did not find its paper {paper_id} in the top {TOP}")
    return result


def _query_text(source: dict[str, Any]) -> tuple[str, str]:
    """The canary's query and the field its distinctiveness is judged on: the title, else the abstract's start."""
    title = (source.get("title") or "").strip()
    return (title, "title") if title else ((source.get("abstract") or "")[:200].strip(), "abstract")


def _distinctive(client: OpenSearch, target: str, candidates: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The candidates whose text has enough words and is shared by few papers: one msearch, a capped count each."""
    worded = [(c, _NUMBER.sub(" ", c[1])) for c in candidates]
    worded = [(c, words) for c, words in worded if len(_WORD.findall(words)) >= MIN_WORDS]
    if not worded:
        return []
    lines: list[dict[str, Any]] = []
    for (_, _, field_name), words in worded:
        lines += [{}, {"size": 0, "track_total_hits": MAX_SHARING + 1,
                       "query": {"match": {field_name: {"query": words, "minimum_should_match": "75%"}}}}]
    responses = client.msearch(index=target, body=lines)["responses"]
    kept = []
    for (candidate, _), response in zip(worded, responses):
        if "error" in response:
            raise MigrationError(f"A canary count query on {target} failed: {response['error']}")
        if response["hits"]["total"]["value"] <= MAX_SHARING:
            kept.append(candidate)
    return kept
