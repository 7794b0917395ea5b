"""Request and response bodies of the service (pydantic); unknown fields are refused, not ignored.

The request models are strict (no "yes" for true, no "10" for 10) and carry the service's limits as
constraints, so the OpenAPI schema says exactly what the service accepts (`search_request_model`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model, model_validator

from ..documents import clean_text
from ..search import HybridSettings, SearchFilters, SearchMode

MAX_FILTER_VALUES = 1024  # per filter list (OpenSearch's `terms` takes 65,536; nobody filters by more than this)
MAX_FILTER_CHARS = 256  # per value: keyword fields keep at most 256 characters (authors.keyword ignore_above)
MIN_YEAR, MAX_YEAR = 1, 9999  # the years the readers keep (records._year)
# Whitespace as str.split() sees it, spelled out: regex \s differs between Python, JavaScript and Rust.
SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{SPACE}]"  # at least one character that is not whitespace


def _clean(value: Any) -> Any:
    """Lone surrogates (JSON escapes like "\\ud800") replaced by U+FFFD, as the readers do."""
    return clean_text(value) if isinstance(value, str) else value


def _whole(value: Any) -> Any:
    """20.0 is the integer 20 (JSON Schema's `integer`); strict validation refuses 20.5, "20" and true."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Text = Annotated[str, BeforeValidator(_clean)]
Int = Annotated[int, BeforeValidator(_whole)]
FilterValue = Annotated[Text, StringConstraints(max_length=MAX_FILTER_CHARS)]
FilterValues = Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Filters(Strict):
    # Left out, not null, when there is no bound (a default the schema shows as no `null`)
    year_from: Int = Field(None, ge=MIN_YEAR, le=MAX_YEAR)  # type: ignore[assignment]
    year_to: Int = Field(None, ge=MIN_YEAR, le=MAX_YEAR)  # type: ignore[assignment]
    categories: FilterValues = []
    authors: FilterValues = []
    sources: FilterValues = []

    def to_filters(self) -> SearchFilters:
        return SearchFilters(self.year_from, self.year_to, tuple(self.categories), tuple(self.authors), tuple(self.sources))


BOTH_ZERO = {"properties": {"bm25": {"const": 0}, "knn": {"const": 0}}, "required": ["bm25", "knn"]}


class Weights(Strict):
    model_config = ConfigDict(json_schema_extra={"not": BOTH_ZERO})

    bm25: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    knn: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_both_zero(self) -> "Weights":
        if self.bm25 + self.knn <= 0:
            raise ValueError("bm25 and knn weights cannot both be 0")
        return self


class SearchRequest(Strict):
    query: Text = Field(
        description="free text (not only whitespace); BM25 treats it as plain words, never as query syntax, and reads "
        "it up to its 300th distinct term", max_length=2000, pattern=NOT_BLANK)
    mode: SearchMode = "hybrid"
    size: Int = Field(10, gt=0, le=100, description="hits to return")
    filters: Filters = Filters()
    weights: Weights | None = Field(None, description="hybrid only: the weights of the normalized BM25 and kNN scores "
                                    "(each in [0, 1], not both 0; scaled to sum to 1)")
    rerank: bool = Field(False, description="rerank the top `rerank_top` with the service's CrossEncoder")
    rerank_top: Int = Field(50, gt=0, le=200)
    passages: bool = Field(True, description="give each hit its best passage (one more request to the node)")
    explain: bool = Field(False, description="hybrid, rrf, bool: add each retriever's rank and score (one more request)")

    def hybrid(self, base: HybridSettings) -> HybridSettings:
        if self.weights is None:
            return base
        return HybridSettings(**{**base.__dict__, "bm25_weight": self.weights.bm25, "knn_weight": self.weights.knn})


def search_request_model(max_query_chars: int, max_size: int, max_rerank_top: int, reranker: bool) -> type[SearchRequest]:
    """SearchRequest with this service's limits in its fields, hence in its OpenAPI schema."""
    query = SearchRequest.model_fields["query"]
    rerank = Field(False, description="rerank the top `rerank_top` with the service's CrossEncoder" if reranker else
                   "always false: this service has no reranker (`mmrag serve --rerank-model MODEL`)",
                   json_schema_extra=None if reranker else {"const": False})
    return create_model(
        "SearchRequest", __base__=SearchRequest, __module__=__name__,
        query=(Text, Field(description=query.description, max_length=max_query_chars, pattern=NOT_BLANK)),
        size=(Int, Field(10, gt=0, le=max_size, description="hits to return")),
        rerank=(bool, rerank),
        rerank_top=(Int, Field(min(50, max_rerank_top), gt=0, le=max_rerank_top)),
    )


class ErrorBody(BaseModel):
    """Every refusal and failure: what went wrong, the request field at fault, the id the service log has."""

    error: str
    field: str | None = Field(None, description="the request field at fault (dotted path), when one is")
    request_id: str = Field(description="the id of this request in the service log (also the X-Request-ID header)")


class Deleted(BaseModel):
    id: str
    deleted: bool


class Readiness(BaseModel):
    ready: bool
    alias: str
    checks: dict[str, str]


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
