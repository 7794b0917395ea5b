"""Fusion recipes: how hybrid or rrf combine BM25 and kNN, kept as a JSON file; and the client-side fusion
that scores a grid of them on the sub-queries' hits fetched once (`mmrag eval --tune`).

The client-side fusion computes what OpenSearch 2.19's neural-search computes, in the same float32 steps
(org.opensearch.neuralsearch.processor, tag 2.19.1.0):

- min_max: (s - min) / (max - min) over the sub-query's hits; a result of 0 becomes 0.001, and a sub-query
  whose hits all score the same gives them 1.0. l2: s / sqrt(sum of squares); 0 when that is 0.
- A paper missing from one sub-query has score 0 there. arithmetic_mean counts it (its weight stays in the
  divisor); geometric_mean and harmonic_mean skip it, so such a paper keeps its one normalized score.
- rrf: 1 / (rank_constant + rank), rounded to 10 decimals, summed over the sub-queries.

It fuses one shard's hits like the node does; on an index of several shards the node normalizes over all
shards but combines and ranks (rrf) per shard, so there the two can differ a little.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

from .. import store
from ..errors import InputError, OpenSearchRequestError
from ..evaluation import Qrels, evaluate
from .queries import COMBINATIONS, NORMALIZATIONS, Combination, HybridSettings, Normalization, clean_query, retriever_bodies

logger = logging.getLogger(__name__)

FusionMode = Literal["hybrid", "rrf"]
FUSION_MODES: tuple[FusionMode, ...] = ("hybrid", "rrf")
Hits = Sequence[tuple[str, float]]  # (paper id, raw score), best first, as one sub-query returned them

GRID_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # bm25 weight; knn gets 1 - it
GRID_RANK_CONSTANTS = (1, 5, 10, 20, 30, 40, 60, 80, 100)
_MIN_MAX_FLOOR = np.float32(0.001)


@dataclass(frozen=True)
class Recipe:
    """One way to fuse BM25 and kNN: the mode, and the parameters of its pipeline."""

    mode: FusionMode = "hybrid"
    normalization: Normalization = "min_max"
    combination: Combination = "arithmetic_mean"
    bm25_weight: float = 0.5
    knn_weight: float = 0.5
    rank_constant: int = 60
    tuned_on: dict[str, Any] | None = field(default=None, compare=False)  # where and how well it was chosen

    def label(self) -> str:
        if self.mode == "rrf":
            return f"rrf rank_constant={self.rank_constant}"
        return f"hybrid {self.normalization} {self.combination} bm25={self.bm25_weight:g} knn={self.knn_weight:g}"

    def settings(self, base: HybridSettings = HybridSettings()) -> HybridSettings:
        """`base` with this recipe's fusion parameters (kNN target, candidates and ef_search stay base's)."""
        return replace(base, normalization=self.normalization, combination=self.combination,
                       bm25_weight=self.bm25_weight, knn_weight=self.knn_weight, rank_constant=self.rank_constant)

    def to_dict(self) -> dict[str, Any]:
        hybrid = self.mode == "hybrid"
        return {
            "mode": self.mode,
            "normalization": self.normalization if hybrid else None,
            "combination": self.combination if hybrid else None,
            "weights": {"bm25": self.bm25_weight, "knn": self.knn_weight} if hybrid else None,
            "rank_constant": None if hybrid else self.rank_constant,
            "tuned_on": self.tuned_on,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> "Recipe":
        """Read and check a recipe; a bad field raises InputError naming `source` and the field."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object with a \"mode\" field, got {type(data).__name__}")

        def choice(name: str, options: Sequence[str], default: str) -> Any:
            value = data.get(name)
            if value is None:
                return default
            if value not in options:
                raise InputError(f"{source}: field {name!r}: unknown {value!r}; choose one of {', '.join(options)}")
            return value

        mode = data.get("mode")
        if mode not in FUSION_MODES:
            raise InputError(f"{source}: field 'mode': {'missing' if mode is None else f'unknown {mode!r}'}; "
                             f"choose one of {', '.join(FUSION_MODES)}")
        weights = data.get("weights")
        if weights is None:
            weights = {"bm25": 0.5, "knn": 0.5}
        if not isinstance(weights, dict) or set(weights) != {"bm25", "knn"}:
            raise InputError(f"{source}: field 'weights': expected {{\"bm25\": W, \"knn\": W}}, got {json.dumps(weights)}")
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise InputError(f"{source}: field 'weights.{name}': {json.dumps(value)} is not a positive number")
        rank_constant = data.get("rank_constant")
        if rank_constant is None:
            rank_constant = 60
        if isinstance(rank_constant, bool) or not isinstance(rank_constant, int) or not 1 <= rank_constant <= 10_000:
            raise InputError(f"{source}: field 'rank_constant': {json.dumps(rank_constant)} is not a whole number "
                             "from 1 to 10000")
        tuned_on = data.get("tuned_on")
        if tuned_on is not None and not isinstance(tuned_on, dict):
            raise InputError(f"{source}: field 'tuned_on': expected an object or null")
        return cls(mode=mode, normalization=choice("normalization", NORMALIZATIONS, "min_max"),
                   combination=choice("combination", COMBINATIONS, "arithmetic_mean"),
                   bm25_weight=float(weights["bm25"]), knn_weight=float(weights["knn"]),
                   rank_constant=rank_constant, tuned_on=tuned_on)


def load_recipe(path: str | Path) -> Recipe:
    """A recipe file written by `mmrag eval --tune --recipe-out` (or by hand)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"recipe file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"recipe file {path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    return Recipe.from_dict(data, source=f"recipe file {path}")


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recipe.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"recipe file {path}: {exc.strerror or exc}") from None
    return path


def recipe_grid(weights: Iterable[float] = GRID_WEIGHTS, rank_constants: Iterable[int] = GRID_RANK_CONSTANTS) -> list[Recipe]:
    """Every normalization x combination x bm25 weight (knn: 1 - it), then rrf at each rank constant."""
    grid = [Recipe("hybrid", norm, comb, w, round(1.0 - w, 6))
            for norm in NORMALIZATIONS for comb in COMBINATIONS for w in weights]
    return grid + [Recipe("rrf", rank_constant=c) for c in rank_constants]


# ---- client-side fusion ----------------------------------------------------------------


@dataclass
class _Prepared:
    """One query's two hit lists, aligned on the union of their ids (BM25's order, then kNN's newcomers)."""

    ids: list[str]
    present: np.ndarray  # (2, n) bool
    normalized: dict[str, np.ndarray]  # technique -> (2, n) float32, 0 where absent
    ranks: np.ndarray  # (2, n) int, 0 where absent


def _prepare(bm25: Hits, knn: Hits) -> _Prepared:
    ids = list(dict.fromkeys([doc for doc, _ in bm25] + [doc for doc, _ in knn]))
    where = {doc: i for i, doc in enumerate(ids)}
    present = np.zeros((2, len(ids)), dtype=bool)
    ranks = np.zeros((2, len(ids)), dtype=np.int64)
    normalized = {name: np.zeros((2, len(ids)), dtype=np.float32) for name in NORMALIZATIONS}
    for row, hits in enumerate((bm25, knn)):
        if not hits:
            continue
        cols = np.fromiter((where[doc] for doc, _ in hits), dtype=np.int64, count=len(hits))
        raw = np.asarray([score for _, score in hits], dtype=np.float32)
        present[row, cols] = True
        ranks[row, cols] = np.arange(1, len(hits) + 1)
        normalized["min_max"][row, cols] = _min_max(raw)
        normalized["l2"][row, cols] = _l2(raw)
    return _Prepared(ids, present, normalized, ranks)


def _min_max(raw: np.ndarray) -> np.ndarray:
    low, high = raw.min(), raw.max()
    if high == low:
        return np.ones_like(raw)
    scores = (raw - low) / (high - low)
    return np.where(scores == 0, _MIN_MAX_FLOOR, scores).astype(np.float32)


def _l2(raw: np.ndarray) -> np.ndarray:
    total = np.add.accumulate(raw * raw, dtype=np.float32)[-1]  # in hit order, as the node sums
    norm = np.float32(math.sqrt(float(total)))
    return np.zeros_like(raw) if norm == 0 else (raw / norm).astype(np.float32)


@lru_cache(maxsize=64)
def _rrf_terms(rank_constant: int, ranks: int) -> np.ndarray:
    """1 / (rank_constant + rank) for rank 0 (absent: 0) to `ranks`, rounded as the node's BigDecimal does."""
    terms = [Decimal(1) / Decimal(rank_constant + rank) for rank in range(1, ranks + 1)]
    rounded = [float(term.quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP)) for term in terms]
    return np.asarray([0.0, *rounded], dtype=np.float32)


def _combined(prepared: _Prepared, recipe: Recipe) -> np.ndarray:
    if recipe.mode == "rrf":
        table = _rrf_terms(recipe.rank_constant, max(1024, int(prepared.ranks.max(initial=0))))
        terms = table[prepared.ranks]
        return (terms[0] + terms[1]).astype(np.float32)
    settings = HybridSettings(bm25_weight=recipe.bm25_weight, knn_weight=recipe.knn_weight)
    w = np.asarray(settings.weights(), dtype=np.float32)[:, None]  # as sent in the pipeline
    scores = prepared.normalized[recipe.normalization]
    if recipe.combination == "arithmetic_mean":  # absent (0) scores count, with their weight
        return ((scores[0] * w[0] + scores[1] * w[1]) / (w[0] + w[1])).astype(np.float32)
    used = scores > 0  # geometric and harmonic skip absent (0) scores
    weight_sum = np.where(used, w, np.float32(0)).sum(axis=0, dtype=np.float32)
    with np.errstate(divide="ignore"):
        if recipe.combination == "geometric_mean":  # the node sums float weight * double log into a float
            logs = np.where(used, w.astype(np.float64) * np.log(np.where(used, scores, 1).astype(np.float64)), 0.0)
            log_sum = (logs[0].astype(np.float32).astype(np.float64) + logs[1]).astype(np.float32)
            mean_log = log_sum / np.where(weight_sum > 0, weight_sum, np.float32(1))
            return np.where(weight_sum > 0, np.exp(mean_log.astype(np.float64)), 0).astype(np.float32)
        inverse = np.where(used, w / np.where(used, scores, 1), np.float32(0)).astype(np.float32)
        harmonic_sum = (inverse[0] + inverse[1]).astype(np.float32)
        return np.where(harmonic_sum > 0, weight_sum / np.where(harmonic_sum > 0, harmonic_sum, 1), 0).astype(np.float32)


def _ranked(prepared: _Prepared, recipe: Recipe, size: int) -> list[tuple[str, float]]:
    scores = _combined(prepared, recipe)
    order = np.argsort(-scores, kind="stable")[:size]
    return [(prepared.ids[i], float(scores[i])) for i in order]


def fuse(bm25: Hits, knn: Hits, recipe: Recipe, *, size: int = 10) -> list[tuple[str, float]]:
    """The top `size` (id, fused score) that hybrid or rrf through `recipe`'s pipeline would return,
    given the best hits of each sub-query (as many as the node fuses: `HybridSettings.candidates`)."""
    return _ranked(_prepare(bm25, knn), recipe, size)


@dataclass(frozen=True)
class TunedRecipe:
    recipe: Recipe
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "metrics": self.metrics}


def score_recipes(
    candidates: dict[str, tuple[Hits, Hits]], qrels: Qrels, recipes: Sequence[Recipe], *, size: int = 100,
    k_values: Sequence[int] | None = None, ignore_identical_ids: bool = True, metric: str = "NDCG@10",
    on_recipe: Callable[[], None] | None = None,
) -> list[TunedRecipe]:
    """Each recipe's metrics over the judged queries, best `metric` first (the grid's order breaks ties)."""
    prepared = {query_id: _prepare(*hits) for query_id, hits in candidates.items()}
    judged = {query_id: qrels[query_id] for query_id in prepared if query_id in qrels}
    results = []
    for recipe in recipes:
        run = {query_id: dict(_ranked(p, recipe, size)) for query_id, p in prepared.items()}
        metrics = evaluate(run, judged, k_values=k_values, ignore_identical_ids=ignore_identical_ids)
        if metric not in metrics:
            raise InputError(f"cannot tune on {metric}: the cutoffs give {', '.join(metrics)}")
        results.append(TunedRecipe(recipe, metrics))
        if on_recipe:
            on_recipe()
    return sorted(results, key=lambda tuned: tuned.metrics[metric], reverse=True)


def fetch_candidates(
    searcher, queries: dict[str, str], *, size: int, hybrid: HybridSettings | None = None, batch: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """Each query's BM25 and kNN hits (the sub-queries of hybrid, run alone), `size` of each, in one
    msearch per `batch` queries; the query vectors are made in one model call per batch."""
    hybrid = hybrid or searcher.hybrid
    items = [(query_id, clean_query(text)) for query_id, text in queries.items()]
    found: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]] = {}
    with store.translated(searcher.binding.url, f"candidate hits in {searcher.alias}"):
        searcher.rebind()
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            _, vectors = searcher.encode_queries([text for _, text in chunk])
            lines: list[dict[str, Any]] = []
            for (_, text), vector in zip(chunk, vectors):
                for body in retriever_bodies(text, vector, size, hybrid=hybrid, with_source=False).values():
                    lines += [{"index": searcher.alias}, body]
            responses = searcher.binding.client.msearch(body=lines)["responses"]
            for i, (query_id, _) in enumerate(chunk):
                lists = []
                for name, response in zip(("bm25", "knn"), responses[2 * i: 2 * i + 2]):
                    if "error" in response:
                        raise OpenSearchRequestError(f"{name} sub-query of query {query_id} failed: {response['error']}")
                    lists.append([(raw["_id"], float(raw["_score"] or 0.0)) for raw in response["hits"]["hits"]])
                found[query_id] = (lists[0], lists[1])
            if on_batch:
                on_batch(len(chunk))
    return found
