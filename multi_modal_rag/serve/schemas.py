"""Request and response bodies of the service (pydantic); unknown fields are refused, not ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..search import HybridSettings, SearchFilters, SearchMode


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(Strict):
    year_from: int | None = None
    year_to: int | None = None
    categories: list[str] = []
    authors: list[str] = []
    sources: list[str] = []

    def to_filters(self) -> SearchFilters:
        return SearchFilters(self.year_from, self.year_to, tuple(self.categories), tuple(self.authors), tuple(self.sources))


class Weights(Strict):
    bm25: float = Field(0.5, ge=0)
    knn: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _not_both_zero(self) -> "Weights":
        if self.bm25 + self.knn <= 0:
            raise ValueError("bm25 and knn weights cannot both be 0")
        return self


class SearchRequest(Strict):
    query: str = Field(description="free text; BM25 treats it as plain words, never as query syntax")
    mode: SearchMode = "hybrid"
    size: int = Field(10, gt=0, description="hits to return (the service's limit applies)")
    filters: Filters = Filters()
    weights: Weights | None = Field(None, description="hybrid only: the weights of the normalized BM25 and kNN scores")
    rerank: bool = Field(False, description="rerank the top `rerank_top` with the service's CrossEncoder")
    rerank_top: int = Field(50, gt=0)
    passages: bool = Field(True, description="give each hit its best passage (one more request to the node)")
    explain: bool = Field(False, description="hybrid, rrf, bool: add each retriever's rank and score (one more request)")

    def hybrid(self, base: HybridSettings) -> HybridSettings:
        if self.weights is None:
            return base
        return HybridSettings(**{**base.__dict__, "bm25_weight": self.weights.bm25, "knn_weight": self.weights.knn})


class RetrieverScore(BaseModel):
    rank: int
    score: float


class Hit(BaseModel):
    id: str
    score: float
    title: str
    passage: str
    highlights: dict[str, list[str]]
    rerank_score: float | None = None
    retrievers: dict[str, RetrieverScore] | None = None
    year: int | None = None
    authors: list[str] = []
    categories: list[str] = []
    source: str | None = None
    url: str | None = None


class SearchResponse(BaseModel):
    query: str
    mode: SearchMode
    index: str
    model: str | None
    took_ms: float
    timings_ms: dict[str, float]
    hits: list[Hit]


class PaperResult(BaseModel):
    position: int
    id: str | None
    outcome: str
    reason: str | None = None
    chunks: int = 0


class PapersResponse(BaseModel):
    index: str
    created: int
    updated: int
    skipped: int
    failed: int
    results: list[PaperResult]


def hit_fields(source: dict[str, Any]) -> dict[str, Any]:
    """The stored fields a hit carries besides title and passage."""
    return {key: source.get(key) for key in ("year", "source", "url") if source.get(key) is not None} | {
        key: list(source.get(key) or []) for key in ("authors", "categories")
    }
