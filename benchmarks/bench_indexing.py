"""Indexing throughput: our indexer against a bare `model.encode` of the same texts, side by side.

    python benchmarks/bench_indexing.py [--docs N] [--json]      (uses $OPENSEARCH_URL)
"""

from __future__ import annotations

from _common import drop, emit, load_papers, make_client, median, parser, scratch_index, settings, timed

from multi_modal_rag.indexing import OpenSearchManager


def main() -> None:
    args = parser(__doc__.splitlines()[0], docs=1000).parse_args()
    papers = load_papers(args.corpus, args.docs)
    conn = settings()
    client = make_client(conn)
    probe = OpenSearchManager(index=scratch_index("probe"), model=args.model, settings=conn)
    spec = probe.spec()
    texts = [embed for p in papers for _, _, embed in probe.chunk_texts(p, spec)]
    model = probe.embedder
    model.encode(texts[:64], batch_size=probe.encode_batch_size)  # warm-up

    times: dict[str, list[float]] = {"ours": [], "bare_encode": []}
    for _ in range(args.repeats):
        times["bare_encode"].append(timed(lambda: model.encode(
            texts, batch_size=probe.encode_batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)))
        name = scratch_index("ours")
        manager = OpenSearchManager(index=name, model=args.model, settings=conn)
        try:
            seconds = timed(lambda: manager.index_all(papers))
            assert manager.count() == len(papers), "indexer lost documents"
        finally:
            drop(client, name)
        times["ours"].append(seconds)

    systems = {name: {"median_s": round(median(t), 2), "docs_per_s": round(len(papers) / median(t), 2), "runs_s": [round(x, 2) for x in t]}
               for name, t in times.items()}
    result = {
        "docs": len(papers), "texts_embedded": len(texts), "model": args.model, "batch_size": probe.encode_batch_size,
        "systems": systems,
        "ratio_ours_to_bare_encode": round(systems["ours"]["docs_per_s"] / systems["bare_encode"]["docs_per_s"], 3),
    }

    def table(r):
        print(f"{r['docs']} papers, {r['texts_embedded']} chunk texts, model {r['model']}, batch {r['batch_size']}")
        for name, s in r["systems"].items():
            print(f"  {name:12s} {s['docs_per_s']:8.2f} docs/s   median {s['median_s']:.2f}s   runs {s['runs_s']}")
        print(f"  ours / bare_encode = {r['ratio_ours_to_bare_encode']:.3f}")

    emit(result, args.json, table)


if __name__ == "__main__":
    main()
