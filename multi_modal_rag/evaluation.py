"""BEIR-style evaluation: load queries and qrels, score runs `{query_id: {doc_id: score}}`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def load_queries(beir_dir: Path) -> dict[str, str]:
    """query id -> text from `queries.jsonl`."""
    path = Path(beir_dir) / "queries.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/)")
    queries = {}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
                queries[str(record["_id"])] = record["text"]
    return queries


def load_qrels(beir_dir: Path, split: str) -> Qrels:
    """query id -> {doc id: relevance} from `qrels/{split}.tsv`."""
    path = Path(beir_dir) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise InputError(f"{path}: not found; splits here: {', '.join(p.stem for p in path.parent.glob('*.tsv'))}")
    return read_qrels(path)


def read_qrels(path: Path) -> Qrels:
    """query id -> {doc id: relevance} from a BEIR qrels file (header line, CRLF tolerated)."""
    qrels: Qrels = {}
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader, None)
        for line_no, row in enumerate(reader, start=2):
            if len(row) >= 3:
                try:
                    qrels.setdefault(row[0], {})[row[1]] = int(row[2])
                except ValueError:
                    raise InputError(f"{path}:{line_no}: relevance {row[2]!r} is not a whole number") from None
    return qrels


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    wanted = {doc for doc, rel in relevant.items() if rel > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


DEFAULT_METRICS = (("NDCG", 10), ("MRR", 10), ("Recall", 100))
_METRICS = {"NDCG": ndcg_at_k, "MRR": mrr_at_k, "Recall": recall_at_k}


def evaluate(run: Run, qrels: Qrels, *, k_values: Sequence[int] | None = None,
             ignore_identical_ids: bool = True) -> dict[str, float]:
    """Metrics averaged over the judged queries (a query missing from the run scores 0).

    Default: NDCG@10, MRR@10 and Recall@100; with `k_values`, NDCG, MRR and Recall at each cutoff. As in BEIR,
    a document whose id is the query's own id is dropped from the run (`ignore_identical_ids`), so corpora that
    hold their queries (ArguAna, Quora) are not scored on finding the query itself.
    """
    wanted = [(name, k) for k in sorted(set(k_values)) for name in _METRICS] if k_values else list(DEFAULT_METRICS)
    if any(k < 1 for _, k in wanted):
        raise InputError(f"--k {','.join(str(k) for _, k in wanted)}: cutoffs must be 1 or more")
    totals = {f"{name}@{k}": 0.0 for name, k in wanted}
    for query_id, relevant in qrels.items():
        scores = run.get(query_id, {})
        ranked = [doc for doc in sorted(scores, key=scores.get, reverse=True) if not (ignore_identical_ids and doc == query_id)]
        for name, k in wanted:
            totals[f"{name}@{k}"] += _METRICS[name](ranked, relevant, k)
    count = len(qrels) or 1
    return {name: round(total / count, 4) for name, total in totals.items()}


def search_run(searcher: Any, queries: dict[str, str], *, mode: str, size: int = 100,
               on_query: Callable[[], None] | None = None, **options: Any) -> Run:
    """Run every query through `searcher.search` (a Searcher or an OpenSearchManager): `{query_id: {doc_id: score}}`."""
    run: Run = {}
    for query_id, text in queries.items():
        hits = searcher.search(text, mode=mode, size=size, passages=0, **options)
        run[query_id] = {hit.id: (hit.rerank_score if options.get("rerank") else hit.score) for hit in hits}
        if on_query is not None:
            on_query()
    return run


def top_overlap(run_a: Run, run_b: Run, k: int = 10) -> float:
    """Mean share of the top `k` that two runs have in common, over the queries of `run_a`."""
    if not run_a:
        return 0.0
    shares = []
    for query_id, scores in run_a.items():
        top_a = set(sorted(scores, key=scores.get, reverse=True)[:k])
        other = run_b.get(query_id, {})
        top_b = set(sorted(other, key=other.get, reverse=True)[:k])
        shares.append(len(top_a & top_b) / max(len(top_a), len(top_b), 1))
    return round(sum(shares) / len(shares), 4)
