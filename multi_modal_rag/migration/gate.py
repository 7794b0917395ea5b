"""The relevance gate: the old and the new index answer the same queries before the swap, and a new model that
ranks worse than the old one by more than `max_drop` is not swapped in.

With judgments (a BEIR folder, or a qrels file beside its `queries.jsonl`), each index is scored on NDCG@10 and
Recall@100 per mode, and the chosen mode decides. Without judgments, a seeded sample of the index's own titles
serves as queries: the report gives how often each index finds the paper of the title in its top 10 and how much
the two top 10s overlap, and decides nothing (a title is a weak stand-in for a user's question).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from opensearchpy import OpenSearch

from ..binding import AliasBinding
from ..connection import ConnectionSettings
from ..encoders import Encoder
from ..errors import InputError, MigrationError
from ..evaluation import Qrels, evaluate, load_qrels, load_queries, read_qrels, search_run, top_overlap
from ..search import SEARCH_MODES, HybridSettings, Searcher
from ..search.recipes import load_recipe

logger = logging.getLogger(__name__)

DECIDING_METRIC = "NDCG@10"
REPORTED_METRICS = ("NDCG@10", "Recall@100")
TITLE_QUERY_PREFIX = "title:"  # query ids of the title sample, so BEIR's identical-ids rule never drops the paper


class GateRefused(MigrationError):
    """The new index ranks worse than the old one; the alias stays, the new index is left for inspection."""


@dataclass
class GateSpec:
    """What the gate evaluates: `judgments` (a BEIR folder or a qrels .tsv) at `split`, or, without judgments,
    `titles` papers' titles as queries. `mode` decides; `modes` are reported."""

    judgments: str | None = None
    split: str = "test"
    mode: str = "hybrid"
    modes: tuple[str, ...] = ("knn", "hybrid")
    max_drop: float = 0.01
    titles: int = 50
    seed: int = 13
    recipe: str | None = None  # the fusion recipe the app searches with (hybrid and rrf), else the defaults

    def __post_init__(self) -> None:
        # saved with the run: a resume from another folder finds the same files
        self.judgments = str(Path(self.judgments).resolve()) if self.judgments else None
        self.recipe = str(Path(self.recipe).resolve()) if self.recipe else None
        self.modes = tuple(dict.fromkeys([*self.modes, self.mode]))
        unknown = [m for m in self.modes if m not in SEARCH_MODES]
        if unknown:
            raise InputError(f"--gate-mode/--gate-modes: unknown {', '.join(unknown)}; choose from {', '.join(SEARCH_MODES)}")
        if not 0 <= self.max_drop < 1:
            raise InputError(f"--max-drop {self.max_drop}: give a drop of NDCG@10 between 0 and 1, e.g. 0.01")
        if self.judgments is None and self.titles < 1:
            raise InputError(f"--gate-titles {self.titles}: give at least 1 title")

    def check(self) -> None:
        """Refuse unusable judgments or recipe before the copy starts, not after it."""
        if self.judgments:
            load_judgments(self.judgments, self.split)
        self.hybrid()

    def hybrid(self) -> HybridSettings:
        return load_recipe(self.recipe).settings() if self.recipe else HybridSettings()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modes": list(self.modes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GateSpec":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["modes"] = tuple(values.get("modes", ()))
        return cls(**values)


@dataclass
class GateReport:
    """Both indexes' metrics per mode, the top-10 overlap per mode, and the decision."""

    spec: dict[str, Any]
    queries: int
    source: dict[str, dict[str, float]] = field(default_factory=dict)
    target: dict[str, dict[str, float]] = field(default_factory=dict)
    overlap_at_10: dict[str, float] = field(default_factory=dict)
    change: float | None = None  # target - source on the deciding metric and mode
    passed: bool = True
    reason: str = ""
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def after_refusal(alias: str, target_index: str) -> str:
    """What a user can do once the gate refused a run."""
    return (f"{target_index} is left for inspection: `mmrag migrate swap --index {alias} --force` swaps it in anyway, "
            f"`mmrag migrate cleanup --index {alias}` drops it.")


def load_judgments(path: str | Path, split: str) -> tuple[dict[str, str], Qrels]:
    """Queries and qrels from a BEIR folder (`queries.jsonl`, `qrels/SPLIT.tsv`), or from a qrels file whose
    `queries.jsonl` sits in its folder or the one above (BEIR's layout)."""
    path = Path(path)
    if path.is_dir():
        queries, qrels = load_queries(path), load_qrels(path, split)
    elif path.is_file():
        folder = next((f for f in (path.parent, path.parent.parent) if (f / "queries.jsonl").is_file()), None)
        if folder is None:
            raise InputError(f"{path}: no queries.jsonl beside it or in the folder above; give the BEIR folder instead")
        queries, qrels = load_queries(folder), read_qrels(path)
    else:
        raise InputError(f"--gate {path}: no such folder or qrels file")
    judged = {q: qrels[q] for q in qrels if q in queries}
    if not judged:
        raise InputError(f"--gate {path}: none of the {len(qrels)} judged queries of split {split!r} is in queries.jsonl")
    return {q: queries[q] for q in judged}, judged


def sample_titles(client: OpenSearch, index: str, count: int, seed: int) -> tuple[dict[str, str], Qrels]:
    """A seeded random sample of papers: their titles as queries, each judged to find its own paper."""
    body = {"size": count, "_source": ["title"],
            "query": {"function_score": {"query": {"match_all": {}}, "random_score": {"seed": seed, "field": "_seq_no"}}}}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    titled = [(h["_id"], h["_source"].get("title", "")) for h in hits if (h.get("_source") or {}).get("title", "").strip()]
    return ({TITLE_QUERY_PREFIX + pid: title for pid, title in titled},
            {TITLE_QUERY_PREFIX + pid: {pid: 1} for pid, _ in titled})


def evaluate_gate(
    spec: GateSpec,
    *,
    client: OpenSearch,
    settings: ConnectionSettings,
    source_index: str,
    target_index: str,
    target_encoder: Encoder,
    on_query: Callable[[], None] | None = None,
) -> GateReport:
    """Score both indexes on the same queries and decide. Reads only; changes nothing."""
    if spec.judgments:
        queries, qrels = load_judgments(spec.judgments, spec.split)
    else:
        queries, qrels = sample_titles(client, source_index, spec.titles, spec.seed)
    client.indices.refresh(index=target_index)
    hybrid = spec.hybrid()
    source = Searcher(AliasBinding(source_index, settings=settings, client=client), hybrid=hybrid, query_cache_size=0)
    target = Searcher(AliasBinding(target_index, settings=settings, client=client, encoder=target_encoder),
                      hybrid=hybrid, query_cache_size=0)
    report = GateReport(spec=spec.to_dict(), queries=len(queries))
    try:
        for mode in spec.modes:
            runs = [search_run(s, queries, mode=mode, size=100, on_query=on_query) for s in (source, target)]
            for side, run in zip((report.source, report.target), runs):
                metrics = evaluate(run, qrels, k_values=[10, 100])
                side[mode] = {name: metrics[name] for name in REPORTED_METRICS}
            report.overlap_at_10[mode] = top_overlap(*runs)
    finally:
        source.binding.close()  # the old model; the new one belongs to the migration
    decide(report, spec)
    return report


def decide(report: GateReport, spec: GateSpec) -> GateReport:
    """Pass or refuse on the deciding mode's NDCG@10 (judgments only; a title sample is reported, not judged)."""
    before, after = report.source[spec.mode][DECIDING_METRIC], report.target[spec.mode][DECIDING_METRIC]
    report.change = round(after - before, 4)
    what = f"{spec.mode} {DECIDING_METRIC} {before:.4f} -> {after:.4f} ({report.change:+.4f})"
    if not spec.judgments:
        report.passed, report.reason = True, f"no judgments, report only: titles found in the top 10, {what}"
    elif report.change < -spec.max_drop:
        report.passed, report.reason = False, f"{what}, a drop of more than --max-drop {spec.max_drop:g}"
    else:
        report.passed, report.reason = True, f"{what}, within --max-drop {spec.max_drop:g}"
    return report
