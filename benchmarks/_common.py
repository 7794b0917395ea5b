"""Shared helpers for the benchmark scripts: corpus loading, timing, memory, output."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable


REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
sys.path.insert(0, str(REPO))

from multi_modal_rag.connection import ConnectionSettings, make_client  # noqa: E402
from multi_modal_rag.documents import Paper, read_papers  # noqa: E402


def parser(description: str, docs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--docs", type=int, default=docs, help=f"papers from SciFact to use (default {docs})")
    p.add_argument("--model", default="minilm")
    p.add_argument("--repeats", type=int, default=3, help="runs of each system, alternating; medians are reported")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--save", metavar="FILE", help="also write the JSON to FILE (e.g. benchmarks/results/indexing.json)")
    p.add_argument("--corpus", default=str(SCIFACT), help="a BEIR folder or JSONL of papers (default: SciFact)")
    return p


def load_papers(corpus: str, limit: int) -> list[Paper]:
    papers = (p for p in read_papers(corpus) if isinstance(p, Paper))
    return list(itertools.islice(papers, limit))


def settings() -> ConnectionSettings:
    return ConnectionSettings.from_env()


def scratch_index(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def drop(client, name: str) -> None:
    from multi_modal_rag.store.template import guard_template_name

    client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)
    client.indices.delete_index_template(name=guard_template_name(name), params={"ignore": 404})


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def save(result: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a
    child started from a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def emit(result: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table(result)

