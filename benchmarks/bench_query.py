"""Query latency per search mode (query embedding included, embedding cache off), side by side.

    python benchmarks/bench_query.py [--docs N] [--queries Q] [--json]      (uses $OPENSEARCH_URL)
"""

from __future__ import annotations

import json
import time

from _common import SCIFACT, drop, emit, load_papers, make_client, median, parser, percentile, save, scratch_index, settings

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.search.queries import SEARCH_MODES


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=2000)
    p.add_argument("--queries", type=int, default=100, help="SciFact test queries to run per mode (default 100)")
    p.add_argument("--index", help="search this existing alias instead of indexing --docs papers into a scratch one")
    args = p.parse_args()
    conn = settings()
    client = make_client(conn)
    name = args.index or scratch_index("query")
    manager = OpenSearchManager(alias=name, model=None if args.index else args.model, settings=conn, query_cache_size=0)
    try:
        if not args.index:
            manager.index_all(load_papers(args.corpus, args.docs))
        texts = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open(encoding="utf-8")][-args.queries:]
        for mode in SEARCH_MODES:  # warm-up: pipelines, model, caches of the node
            manager.search(texts[0], mode=mode)
        latencies: dict[str, list[float]] = {mode: [] for mode in SEARCH_MODES}
        for text in texts:  # modes interleaved, so machine noise hits them alike
            for mode in SEARCH_MODES:
                started = time.perf_counter()
                manager.search(text, mode=mode, size=10)
                latencies[mode].append((time.perf_counter() - started) * 1000)
    finally:
        if not args.index:
            drop(client, name)
    modes = {m: {"p50_ms": round(median(v), 1), "p95_ms": round(percentile(v, 95), 1)} for m, v in latencies.items()}
    result = {"docs": manager.count() if args.index else args.docs, "queries": len(texts), "modes": modes,
              "ratio_hybrid_to_knn_p50": round(modes["hybrid"]["p50_ms"] / modes["knn"]["p50_ms"], 3)}

    def table(r):
        print(f"{r['queries']} queries per mode over {r['docs']} papers (embedding cache off)")
        for mode, s in r["modes"].items():
            print(f"  {mode:7s} p50 {s['p50_ms']:7.1f} ms   p95 {s['p95_ms']:7.1f} ms")
        print(f"  hybrid p50 / knn p50 = {r['ratio_hybrid_to_knn_p50']:.3f}")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
