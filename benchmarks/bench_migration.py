"""Migration throughput against a bare `encode` of the target model, and peak memory against corpus size.

    python benchmarks/bench_migration.py [--docs N] [--to-model NAME] [--scale 10] [--json]   (uses $OPENSEARCH_URL)

Throughput: index --docs papers with --model, migrate them to --to-model, and encode the same chunk
texts with the target model, side by side. Memory: migrations of --docs and --scale x --docs papers
run in fresh child processes; their peak RSS is compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import drop, emit, load_papers, make_client, median, parser, peak_rss_mb, save, scratch_index, settings

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.migration import Migrator


def migrate_once(papers, model: str, to_model: str, conn) -> tuple[float, int]:
    """Index papers with `model` into a scratch alias, migrate it; returns (seconds, papers copied)."""
    client = make_client(conn)
    name = scratch_index("migrate")
    try:
        OpenSearchManager(alias=name, model=model, settings=conn).index_all(papers)
        migrator = Migrator(name, to_model, settings=conn, client=client)
        migrator.encoder  # load the target model before the clock starts
        started = time.perf_counter()
        state = migrator.run()
        return time.perf_counter() - started, state.copied
    finally:
        drop(client, name)
        client.delete(index="mmrag-migrations", id=name, params={"ignore": 404})


def child(args) -> None:
    """One migration in this process; prints its peak RSS."""
    papers = load_papers(args.corpus, args.docs)
    seconds, copied = migrate_once(papers, args.model, args.to_model, settings())
    peak_mb = peak_rss_mb()
    print(json.dumps({"docs": copied, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=300)
    p.add_argument("--to-model", default="mpnet")
    p.add_argument("--scale", type=int, default=10, help="the memory check migrates --docs and scale x --docs papers (1: skip it)")
    p.add_argument("--memory-model", default=None, help="target model for the memory runs (default: --to-model)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    conn = settings()
    papers = load_papers(args.corpus, args.docs)
    migrator = Migrator("unused", args.to_model, settings=conn, to_precision="fp32")
    target, spec = migrator.encoder, migrator.target_spec(Encoder(args.model).spec())  # the chunking a migration really uses
    texts = [c.embed_text for paper in papers for c in target.chunk(paper, spec)]
    target.model.encode(texts[:32], batch_size=target.batch_size)  # warm-up
    runs = {"migration": [], "bare_encode": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        target.model.encode(texts, batch_size=target.batch_size, normalize_embeddings=True, show_progress_bar=False)
        runs["bare_encode"].append(time.perf_counter() - started)
        runs["migration"].append(migrate_once(papers, args.model, args.to_model, conn)[0])
    systems = {k: {"median_s": round(median(v), 2), "docs_per_s": round(len(papers) / median(v), 2), "runs_s": [round(x, 2) for x in v]}
               for k, v in runs.items()}

    memory = {}
    for docs in (args.docs, args.docs * args.scale) if args.scale > 1 else ():
        cmd = [sys.executable, __file__, "--child", "--docs", str(docs), "--model", args.model,
               "--to-model", args.memory_model or args.to_model, "--corpus", args.corpus]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        memory[str(docs)] = json.loads(out)
    small, large = memory.get(str(args.docs)), memory.get(str(args.docs * args.scale))
    result = {
        "docs": len(papers), "from_model": args.model, "to_model": args.to_model, "texts_embedded": len(texts),
        "systems": systems,
        "ratio_migration_to_bare_encode": round(systems["migration"]["docs_per_s"] / systems["bare_encode"]["docs_per_s"], 3),
        "memory": memory,
        "peak_rss_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"] - 1, 3) if memory else None,
    }

    def table(r):
        print(f"{r['docs']} papers, {r['from_model']} -> {r['to_model']}, {r['texts_embedded']} chunk texts")
        for name, s in r["systems"].items():
            print(f"  {name:12s} {s['docs_per_s']:8.2f} docs/s   median {s['median_s']:.2f}s   runs {s['runs_s']}")
        print(f"  migration / bare_encode = {r['ratio_migration_to_bare_encode']:.3f}")
        for docs, m in r["memory"].items():
            print(f"  peak RSS migrating {docs:>6s} papers: {m['peak_rss_mb']:.0f} MB ({m['seconds']}s)")
        if r["peak_rss_growth"] is not None:
            print(f"  peak RSS growth at {args.scale}x the papers: {r['peak_rss_growth'] * 100:.1f}%")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
