"""The node's side of indexing: one bulk request of already embedded papers, into the current template and into
the template as it was before version 2 (chunk texts analysed as English text).

    python benchmarks/bench_bulk.py [--docs N] [--repeats N] [--json] [--save FILE]      (uses $OPENSEARCH_URL)

The papers are embedded once; each run creates a fresh index, times `helpers.bulk` of them, and drops it.
The two layouts alternate, so a busy machine slows both alike.
"""

from __future__ import annotations

from _common import drop, emit, load_papers, make_client, median, parser, save, scratch_index, settings, timed
from opensearchpy import helpers

from multi_modal_rag.encoders import Encoder, embed_papers
from multi_modal_rag.store.indices import build_index_body

LAYOUTS = ("current", "chunk_text_analysed")


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=200)
    args = p.parse_args()
    papers = load_papers(args.corpus, args.docs)
    client = make_client(settings())
    encoder = Encoder(args.model)
    spec = encoder.spec()
    docs = embed_papers(encoder, papers, spec)
    times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.repeats):
        for layout in LAYOUTS:
            body = build_index_body(spec)
            if layout == "chunk_text_analysed":
                body["mappings"]["properties"]["chunks"]["properties"]["text"] = {"type": "text", "analyzer": "english"}
            name = scratch_index(f"bulk-{layout}")
            client.indices.create(index=name, body=body)
            try:
                actions = [{"_index": name, "_id": doc["paper_id"], "_source": doc} for doc in docs]
                times[layout].append(timed(lambda: helpers.bulk(client, actions)))
            finally:
                drop(client, name)
    result = {"docs": len(docs), "chunks": sum(len(d["chunks"]) for d in docs), "repeats": args.repeats,
              "layouts": {layout: {"median_ms": round(1000 * median(t), 1), "runs_ms": [round(1000 * x, 1) for x in t]}
                          for layout, t in times.items()}}
    result["ratio_current_to_analysed"] = round(median(times["current"]) / median(times["chunk_text_analysed"]), 3)

    def table(r: dict) -> None:
        print(f"one bulk request of {r['docs']} papers ({r['chunks']} chunks), {r['repeats']} runs each")
        for layout, t in r["layouts"].items():
            print(f"  {layout:20s} median {t['median_ms']:7.1f} ms   runs {t['runs_ms']}")
        print(f"  current / analysed = {r['ratio_current_to_analysed']:.3f}")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
