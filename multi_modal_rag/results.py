"""Typed results: per-document indexing outcomes, their summary, search hits and index status."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

IndexOutcome = Literal["created", "updated", "skipped", "failed"]


@dataclass(frozen=True)
class IndexResult:
    """What happened to one input record."""

    doc_id: str | None
    outcome: IndexOutcome
    origin: str = ""
    reason: str | None = None
    chunks: int = 0


@dataclass
class IndexSummary:
    """Counts of an indexing run, with the failures kept for the report."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    chunks: int = 0
    seconds: float = 0.0
    failures: list[IndexResult] = field(default_factory=list)

    def add(self, result: IndexResult) -> None:
        setattr(self, result.outcome, getattr(self, result.outcome) + 1)
        if result.outcome == "failed":
            self.failures.append(result)
        elif result.outcome != "skipped":
            self.chunks += result.chunks

    @property
    def indexed(self) -> int:
        return self.created + self.updated

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def failure_reasons(self) -> Counter[str]:
        return Counter(str(f.reason).split(":")[0] for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["indexed"] = self.indexed
        data["docs_per_second"] = round(self.docs_per_second, 2)
        data["failures"] = [asdict(f) for f in self.failures]
        return data


@dataclass
class SearchHit:
    """One search result."""

    id: str
    title: str
    score: float
    passage: str = ""
    highlights: dict[str, list[str]] = field(default_factory=dict)
    rerank_score: float | None = None
    source: dict[str, Any] = field(default_factory=dict)
    index: str = ""  # the concrete index it came from (the alias may point elsewhere after a migration)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IndexStatus:
    """What an alias points at and what that index holds."""

    alias: str
    index: str | None
    model: str | None = None
    dimension: int | None = None
    space_type: str | None = None
    engine: str | None = None
    documents: int = 0
    chunks: int = 0
    store_size_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
