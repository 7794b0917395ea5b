"""Indexing throughput, side by side on one corpus, model and node: our indexer, a bare
`model.encode` of the same texts (the limit), the seed script, LangChain and Haystack; and our indexer
with `--precision int8` (dynamic int8 quantization on the CPU) beside the peers at fp32, as their users run them.

    python benchmarks/bench_indexing.py [--docs N] [--json] [--save FILE]      (uses $OPENSEARCH_URL)

Every system embeds the same chunk texts with the same model and batch size, into an index
with the same HNSW settings; the peers store one document per chunk, ours one per paper with
nested chunks. docs/s counts papers. Systems run in a rotating order, `--repeats` times each.
"""

from __future__ import annotations

from typing import Callable

from _common import drop, emit, load_papers, make_client, median, parser, save, scratch_index, settings, timed
from peers import PeerUnavailable, Workload, prepare_haystack, prepare_langchain, prepare_seed

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.models import model_path

SYSTEMS = ("ours", "ours_int8", "bare_encode", "seed", "langchain", "haystack")


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=300)
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    args = p.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    papers = load_papers(args.corpus, args.docs)
    conn = settings()
    client = make_client(conn)
    probe = Encoder(args.model)
    spec = probe.spec()
    chunked = [(p.doc_id(), c.embed_text) for p in papers for c in probe.chunk(p, spec)]
    w = Workload(conn=conn, client=client, model=probe.model, model_path=model_path(args.model), spec=spec,
                 batch_size=probe.batch_size, texts=[t for _, t in chunked], paper_ids=[i for i, _ in chunked])
    w.model.encode(w.texts[:64], batch_size=w.batch_size, show_progress_bar=False)  # warm-up

    def prepare_ours(w: Workload, name: str, precision: str = "fp32") -> Callable[[], None]:
        manager = OpenSearchManager(alias=name, model=args.model, settings=conn, precision=precision)
        manager.binding.encoder.encode_documents(w.texts[:64])  # warm-up, as the peers' models are warm
        return lambda: manager.index_all(papers)

    def prepare_bare(w: Workload, name: str) -> Callable[[], None]:
        return lambda: w.model.encode(w.texts, batch_size=w.batch_size, normalize_embeddings=True, show_progress_bar=False)

    prepare = {"ours": prepare_ours, "ours_int8": lambda w, name: prepare_ours(w, name, "int8"), "bare_encode": prepare_bare, "seed": prepare_seed,
               "langchain": prepare_langchain, "haystack": prepare_haystack}
    # ours stores one document per paper, the peers one per chunk text; bare encode stores nothing
    wanted = {"ours": len(papers), "ours_int8": len(papers), "bare_encode": None, "seed": len(w.texts), "langchain": len(w.texts), "haystack": len(w.texts)}
    times: dict[str, list[float]] = {s: [] for s in systems}
    skipped: dict[str, str] = {}
    for repeat in range(args.repeats):
        order = systems[repeat % len(systems):] + systems[:repeat % len(systems)]
        for system in order:
            if system in skipped:
                continue
            name = scratch_index(system)
            try:
                seconds = timed(prepare[system](w, name))
                if wanted[system] is not None:
                    count = client.count(index=name)["count"]
                    if count != wanted[system]:
                        raise SystemExit(f"{system} indexed {count} of {wanted[system]} documents")
                times[system].append(seconds)
            except PeerUnavailable as exc:
                skipped[system] = f"{exc}; install with `pip install -e .[bench]`"
            finally:
                drop(client, name)

    results: dict[str, dict] = {}
    for system in systems:
        if system in skipped:
            results[system] = {"skipped": skipped[system]}
            continue
        t = times[system]
        results[system] = {"docs_per_s": round(len(papers) / median(t), 2), "median_s": round(median(t), 2),
                           "runs_s": [round(x, 2) for x in t]}
    bare = results.get("bare_encode", {}).get("docs_per_s")
    for system, r in results.items():
        if bare and "docs_per_s" in r:
            r["ratio_to_bare_encode"] = round(r["docs_per_s"] / bare, 3)
    result = {"docs": len(papers), "texts_embedded": len(w.texts), "model": args.model, "batch_size": w.batch_size,
              "repeats": args.repeats, "systems": results}
    peers = [results[s]["docs_per_s"] for s in ("langchain", "haystack") if "docs_per_s" in results.get(s, {})]
    for ours in ("ours", "ours_int8"):
        if peers and "docs_per_s" in results.get(ours, {}):
            result[f"ratio_{ours}_to_faster_peer"] = round(results[ours]["docs_per_s"] / max(peers), 3)

    def table(r: dict) -> None:
        print(f"{r['docs']} papers, {r['texts_embedded']} chunk texts, model {r['model']}, batch {r['batch_size']}, "
              f"{r['repeats']} runs each")
        for name, s in r["systems"].items():
            if "skipped" in s:
                print(f"  {name:12s} skipped: {s['skipped']}")
                continue
            ratio = f"   {s['ratio_to_bare_encode']:.3f} x bare_encode" if "ratio_to_bare_encode" in s else ""
            print(f"  {name:12s} {s['docs_per_s']:8.2f} docs/s   median {s['median_s']:7.2f}s{ratio}   runs {s['runs_s']}")
        for ours in ("ours", "ours_int8"):
            if f"ratio_{ours}_to_faster_peer" in r:
                print(f"  {ours} / faster of LangChain and Haystack = {r[f'ratio_{ours}_to_faster_peer']:.3f}")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
