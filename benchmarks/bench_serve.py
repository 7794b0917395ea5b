"""Load on `mmrag serve` (hybrid, query cache off) beside a plain FastAPI endpoint and OpenSearch alone.

    python benchmarks/bench_serve.py --index scifact-eval-minilm [--clients 1,8,32] [--seconds 15] [--json]

Each level runs N client threads for a fixed time, cycling SciFact test queries, against: `mmrag serve`
with best passages (ours, as the app gets it) and without (`"passages": false`: the same work as the peer),
`plain_endpoint.py` (encode + search per request, no passages: the peer), and the same hybrid searches sent
straight to OpenSearch with query vectors computed beforehand (the limit). Client, service and node
share this machine's cores, as they would on a one-box deployment.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import REPO, SCIFACT, emit, make_client, median, parser, percentile, save, settings

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.devtools.service import ServiceProcess, free_port
from multi_modal_rag.models import model_path
from multi_modal_rag.search.queries import search_body


def test_queries(limit: int | None = None) -> list[str]:
    qrels = SCIFACT / "qrels" / "test.tsv"
    wanted = {line.split("\t")[0] for line in qrels.read_text().splitlines()[1:] if line.strip()}
    texts = [q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").open(encoding="utf-8")) if q["_id"] in wanted]
    return texts[:limit] if limit else texts


def http_load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own keep-alive connection, POSTing bodies in turn until time is up."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, bad = [], []
        for body in itertools.islice(itertools.cycle(bodies), offset, None):
            if time.perf_counter() >= stop_at:
                break
            started = time.perf_counter()
            try:
                conn.request("POST", "/search", body=body, headers={"content-type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    bad.append(f"{response.status} {payload[:120]!r}")
                    continue
            except (OSError, http.client.HTTPException) as exc:
                bad.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    return _run_threads(client, clients, seconds, latencies, errors)


def opensearch_load(alias: str, pipeline: str, queries: list[tuple[str, list[float]]], clients: int, seconds: float) -> dict:
    """The limit: the same hybrid searches, vectors ready, straight to the node from `clients` threads."""
    client = make_client(settings().__class__(**{**settings().__dict__, "pool_maxsize": 64}))
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run(offset: int) -> None:
        mine, bad = [], []
        for text, vector in itertools.islice(itertools.cycle(queries), offset, None):
            if time.perf_counter() >= stop_at:
                break
            started = time.perf_counter()
            try:
                client.search(index=alias, body=search_body("hybrid", text, vector, 10), params={"search_pipeline": pipeline})
            except Exception as exc:  # counted, never fatal: errors are part of the result
                bad.append(repr(exc)[:120])
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    return _run_threads(run, clients, seconds, latencies, errors)


def _run_threads(target, clients: int, seconds: float, latencies: list[float], errors: list[str]) -> dict:
    threads = [threading.Thread(target=target, args=(i * 37,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {"clients": clients, "seconds": round(elapsed, 1), "queries": len(ms), "qps": round(len(ms) / elapsed, 1),
            "p50_ms": round(median(ms), 1) if ms else None, "p99_ms": round(percentile(ms, 99), 1) if ms else None,
            "errors": len(errors), "error_samples": sorted(set(errors))[:3]}


def plain_endpoint(alias: str, model: str, pipeline: str) -> subprocess.Popen:
    port = free_port()
    env = {**os.environ, "BENCH_ALIAS": alias, "BENCH_MODEL_PATH": str(model_path(model)), "BENCH_PIPELINE": pipeline}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "plain_endpoint:app", "--app-dir", str(Path(__file__).parent),
                                "--port", str(port), "--log-level", "warning"], env=env)
    process.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/docs")
            return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the plain endpoint did not start")


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=0)
    p.add_argument("--index", default="scifact-eval-minilm", help="an alias holding SciFact, indexed by `mmrag eval` (default)")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=15.0, help="time per level and system (default 15)")
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    manager = OpenSearchManager(args.index, None, settings(), query_cache_size=0)
    model = manager.binding.encoder.name if manager.resolve_index() else None
    if model is None:
        raise SystemExit(f"no index behind {args.index}: run `mmrag eval {SCIFACT} --index {args.index}` first")
    texts = test_queries()
    pipeline = manager.searcher.ensure_pipeline("hybrid", manager.searcher.hybrid)
    vectors = manager.binding.encoder.encode_queries(texts)
    precomputed = [(t, v.tolist()) for t, v in zip(texts, vectors)]
    bodies = [json.dumps({"query": t, "mode": "hybrid", "size": 10}).encode() for t in texts]
    no_passages = [json.dumps({"query": t, "mode": "hybrid", "size": 10, "passages": False}).encode() for t in texts]
    results: dict[str, list[dict]] = {"ours": [], "ours_no_passages": [], "plain": [], "opensearch": []}
    ours = ServiceProcess(["--index", args.index, "--query-cache", "0"], env={"MMRAG_API_KEYS": ""})
    peer = None
    with ours:
        peer = plain_endpoint(args.index, model, pipeline)
        try:
            for port in (int(ours.url.rsplit(":", 1)[1]), peer.port):  # warm-up: models, pipelines, node caches
                http_load(port, bodies[:20], 2, 3)
            for level in levels:  # systems side by side at each level, so machine noise hits them alike
                results["ours"].append(http_load(int(ours.url.rsplit(":", 1)[1]), bodies, level, args.seconds))
                results["ours_no_passages"].append(http_load(int(ours.url.rsplit(":", 1)[1]), no_passages, level, args.seconds))
                results["plain"].append(http_load(peer.port, bodies, level, args.seconds))
                results["opensearch"].append(opensearch_load(args.index, pipeline, precomputed, level, args.seconds))
        finally:
            peer.terminate()
            peer.wait()
    by_level = {s: {r["clients"]: r for r in rs} for s, rs in results.items()}
    top, mid, one = max(levels), (8 if 8 in levels else levels[len(levels) // 2]), min(levels)
    goals = {
        system: {
            f"errors_at_{top}": by_level[system][top]["errors"],
            f"p99_at_{mid}_over_p50_at_{one}": round(by_level[system][mid]["p99_ms"] / by_level[system][one]["p50_ms"], 2),
            f"qps_at_{top}_over_plain": round(by_level[system][top]["qps"] / by_level["plain"][top]["qps"], 2),
            f"qps_at_{top}_over_opensearch": round(by_level[system][top]["qps"] / by_level["opensearch"][top]["qps"], 2),
        }
        for system in ("ours", "ours_no_passages")
    }
    result = {"index": args.index, "docs": manager.count(), "model": model, "queries": len(texts), "mode": "hybrid",
              "seconds_per_run": args.seconds, "cores": os.cpu_count(), "systems": results, "goals": goals}

    def table(r):
        print(f"{r['queries']} SciFact test queries, hybrid, {r['docs']} papers, {r['cores']} cores, {r['seconds_per_run']:.0f} s per run")
        print(f"  {'system':17s} {'clients':>7s} {'q/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}")
        for level in levels:
            for system in results:
                s = by_level[system][level]
                print(f"  {system:17s} {level:7d} {s['qps']:7.1f} {s['p50_ms'] or 0:8.1f} {s['p99_ms'] or 0:8.1f} {s['errors']:6d}")
        for system, values in r["goals"].items():
            print(f"  {system}: " + ", ".join(f"{name} {value}" for name, value in values.items()))

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
