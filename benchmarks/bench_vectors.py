"""Vector storage side by side: the vector files of each index, its kNN latency and NDCG@10 (kNN and hybrid).

    python benchmarks/bench_vectors.py copy SOURCE TARGET [--vector-encoding sq8] [--reduce-dim N]
    python benchmarks/bench_vectors.py measure ALIAS [ALIAS ...] [--queries 300] [--json] [--save FILE]

`copy` builds TARGET-v1 from the papers of the SciFact index SOURCE without running the model again: the stored
chunk vectors are written as they are (fp32, sq8: the node quantizes) or through a PCA projection fitted on a
seeded sample of 2,000 of them (--reduce-dim, the fit `mmrag index --reduce-dim` does), the paper vector being
the normalized mean of its projected chunks, as `embed_papers` makes it. The source is only read (no write
block, unlike a migration), and the model's vectors are the same as a re-embedding's. Each copy is force-merged
to one segment, so sizes compare like with like.

`measure`: Lucene's files per index: `.vec` holds the raw float vectors (kept on disk with sq8 too, for merges
and rescoring), `.veq` the quantized ones (sq8 only: what the HNSW search reads), `.vex` the graph. "searched"
is what a kNN search keeps in memory: `.veq` + `.vex` with sq8, `.vec` + `.vex` without. Latency: kNN mode,
size 10, query embedding included (each query's first search), queries interleaved across the indexes. NDCG@10 over SciFact's test queries,
each mode run at size 100 as `mmrag eval` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import struct
import sys
import time

import numpy as np
from _common import SCIFACT, emit, make_client, median, save, settings

from multi_modal_rag import OpenSearchManager, store
from multi_modal_rag.evaluation import evaluate, load_qrels, load_queries
from multi_modal_rag.projection import SAMPLE_CHUNKS, SEED, fit_projection

VECTOR_FILES = ("vec", "veq", "vex")


def vector_bytes(client, index: str) -> dict[str, int]:
    """Bytes of each vector file kind in the index's live segments, both vector fields (paper, chunks) summed.

    Read from the shard's folder, so only for a node on this machine: the segment stats API keeps one file per
    extension and segment, and each vector field has its own files (`_0_Lucene99HnswVectorsFormat_0.vec`, `_1.vec`).
    Compound segments (`.cfs`) are read through their entry table (`.cfe`)."""
    from pathlib import Path

    nodes = client.nodes.stats(node_id="_local", metric="fs")["nodes"]
    data = Path(next(iter(nodes.values()))["fs"]["data"][0]["path"])
    uuid = client.indices.get_settings(index=index)[index]["settings"]["index"]["uuid"]
    folder = data / "indices" / uuid / "0" / "index"
    live = {row["segment"] for row in client.cat.segments(index=index, format="json")}
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not here; vector file sizes need the node on this machine")
    sizes = dict.fromkeys(VECTOR_FILES, 0)
    for path in folder.iterdir():
        segment = path.name.split(".")[0].split("_")[1] if path.name.startswith("_") else None
        if segment is None or f"_{segment}" not in live:
            continue
        files = _compound_entries(path) if path.suffix == ".cfe" else {path.name: path.stat().st_size}
        for name, length in files.items():
            ext = name.rsplit(".", 1)[-1]
            if ext in sizes:
                sizes[ext] += length
    return sizes


def _compound_entries(cfe) -> dict[str, int]:
    """Lucene90CompoundFormat's entry table: index header, then vint count and (name, offset, length) each."""
    data, at = cfe.read_bytes(), 4  # past the magic number

    def vint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    def string() -> str:
        nonlocal at
        length = vint()
        at += length
        return data[at - length : at].decode()

    string()
    at += 4 + 16  # version, segment id
    at += 1 + data[at]  # suffix
    entries = {}
    for _ in range(vint()):
        name = string()
        entries[name] = struct.unpack_from("<q", data, at + 8)[0]
        at += 16
    return entries


def copy(args: argparse.Namespace) -> None:
    client = make_client(settings())
    source = store.resolve_alias(client, args.source)
    spec = store.spec_of(client, source)
    if spec is None or spec.projection:
        raise SystemExit(f"{args.source}: needs an index of the model's own vectors")
    projection = None
    if args.reduce_dim:
        body = {"size": SAMPLE_CHUNKS, "_source": ["chunks.embedding"],
                "query": {"function_score": {"random_score": {"seed": 13, "field": "_seq_no"}}}}
        vectors = [c["embedding"] for h in client.search(index=source, body=body)["hits"]["hits"] for c in h["_source"]["chunks"]]
        vectors = random.Random(SEED).sample(vectors, min(SAMPLE_CHUNKS, len(vectors)))
        projection = fit_projection(np.asarray(vectors, dtype=np.float32), args.reduce_dim, model=f"{spec.model}@{spec.precision}")
        store.save_projection(client, projection)
        print(f"fitted {projection.id} on {projection.fitted_on} chunks: {projection.explained_variance:.1%} of the variance")
    target_spec = dataclasses.replace(spec, vector_encoding=args.vector_encoding,
                                      dimension=projection.output_dim if projection else spec.dimension,
                                      projection=projection.id if projection else None)
    target = store.versioned_name(args.target, 1)
    store.create_index(client, target, target_spec, settings={"refresh_interval": "-1"})
    from opensearchpy import helpers

    def actions():
        for page in store.scan_sources(client, source, fields=["*"], page_size=256):
            for doc in page:
                if projection is not None:
                    chunks = projection.apply(np.asarray([c["embedding"] for c in doc["chunks"]], dtype=np.float32))
                    paper = chunks.mean(axis=0)
                    doc["embedding"] = paper / np.linalg.norm(paper)
                    for chunk, vector in zip(doc["chunks"], chunks):
                        chunk["embedding"] = vector
                yield {"_index": target, "_id": doc["paper_id"], "_source": doc}

    started = time.perf_counter()
    written, errors = helpers.bulk(client, actions(), chunk_size=256, max_retries=3, raise_on_error=False)
    if errors:
        raise SystemExit(f"{len(errors)} papers failed: {str(errors[0])[:300]}")
    client.indices.put_settings(index=target, body={"index": {"refresh_interval": "1s"}})
    client.indices.forcemerge(index=target, params={"max_num_segments": 1, "request_timeout": 600})
    client.indices.refresh(index=target)
    store.point_alias(client, args.target, target)
    print(f"{target}: {written} papers in {time.perf_counter() - started:.0f} s ({target_spec.vector_encoding}, "
          f"{target_spec.dimension} dims); alias {args.target}")


def measure(args: argparse.Namespace) -> None:
    conn = settings()
    client = make_client(conn)
    queries, qrels = load_queries(SCIFACT), load_qrels(SCIFACT, "test")
    judged = [q for q in qrels if q in queries][: args.queries]
    # the cache holds each query's vector after its timed search (embedding included), for the NDCG runs
    managers = {alias: OpenSearchManager(alias=alias, settings=conn) for alias in args.aliases}
    latencies: dict[str, list[float]] = {alias: [] for alias in args.aliases}
    for manager in managers.values():
        manager.search(queries[judged[0]], mode="knn")  # warm-up
    runs: dict[str, dict[str, dict]] = {alias: {mode: {} for mode in args.modes} for alias in args.aliases}
    for done, query_id in enumerate(judged, start=1):
        if done % 50 == 0:
            print(f"{done}/{len(judged)} queries", file=sys.stderr, flush=True)
        for alias, manager in managers.items():
            started = time.perf_counter()
            manager.search(queries[query_id], mode="knn", size=10, passages=0)
            latencies[alias].append((time.perf_counter() - started) * 1000)
            for mode in args.modes:
                hits = manager.search(queries[query_id], mode=mode, size=100, passages=0)
                runs[alias][mode][query_id] = {hit.id: hit.score for hit in hits}
    indexes = {}
    for alias in args.aliases:
        index = store.resolve_alias(client, alias)
        spec = store.spec_of(client, index)
        files = vector_bytes(client, index)
        ndcg = {mode: round(evaluate(runs[alias][mode], {q: qrels[q] for q in judged}, k_values=[10])["NDCG@10"], 4)
                for mode in args.modes}
        indexes[alias] = {"index": index, "vector_encoding": spec.vector_encoding, "dimension": spec.dimension,
                          "projection": spec.projection, "files": files,
                          "searched_bytes": (files["veq"] or files["vec"]) + files["vex"],
                          "knn_p50_ms": round(median(latencies[alias]), 1), "ndcg@10": ndcg}
    base = next((r for r in indexes.values() if r["vector_encoding"] == "fp32" and not r["projection"]), None)
    for r in indexes.values():
        if base:
            r["searched_ratio_to_fp32"] = round(r["searched_bytes"] / base["searched_bytes"], 3)
            r["vectors_ratio_to_fp32"] = round((r["files"]["veq"] or r["files"]["vec"]) / base["files"]["vec"], 3)
    result = {"queries": len(judged), "modes": args.modes, "indexes": indexes}

    def table(r: dict) -> None:
        print(f"SciFact test, {r['queries']} queries; kNN p50 at size 10, interleaved; sizes in MB")
        for alias, x in r["indexes"].items():
            f = x["files"]
            ratio = f" vectors {x.get('vectors_ratio_to_fp32', 1):.3f}x searched {x.get('searched_ratio_to_fp32', 1):.3f}x" if base else ""
            scores = " ".join(f"{m} {v:.4f}" for m, v in x["ndcg@10"].items())
            print(f"  {alias:20s} {x['vector_encoding']:4s} {x['dimension']:4d}d vec {f['vec'] / 1e6:5.1f} veq {f['veq'] / 1e6:5.1f} "
                  f"vex {f['vex'] / 1e6:4.1f}{ratio}  p50 {x['knn_p50_ms']:.1f} ms  NDCG@10 {scores}")

    save(result, args.save)
    emit(result, args.json, table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("copy", help="TARGET-v1 from SOURCE's stored vectors, re-encoded or projected")
    c.add_argument("source")
    c.add_argument("target")
    c.add_argument("--vector-encoding", choices=["fp32", "sq8"], default="fp32")
    c.add_argument("--reduce-dim", type=int, metavar="N")
    c.set_defaults(func=copy)
    m = sub.add_parser("measure", help="sizes, kNN p50 and NDCG@10 of each alias")
    m.add_argument("aliases", nargs="+")
    m.add_argument("--queries", type=int, default=300, help="SciFact test queries (default: all 300)")
    m.add_argument("--modes", type=lambda s: s.split(","), default=["knn", "hybrid"], help="NDCG modes (default knn,hybrid)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--save", metavar="FILE")
    m.set_defaults(func=measure)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
