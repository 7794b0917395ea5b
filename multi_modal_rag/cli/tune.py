"""`mmrag tune`: fine-tune an embedding model on a BEIR folder's judgments, with texts and hard negatives from an index."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..connection import ConnectionSettings
from .commands import _print_json, _progress, console, err_console


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    from ..tuning import TuneConfig

    defaults = TuneConfig()
    p = sub.add_parser(
        "tune",
        help="fine-tune a sentence-transformers model on your relevance judgments (BEIR qrels)",
        description="Fine-tune BASE on the judged (query, paper) pairs of BEIR_DIR/qrels/SPLIT.tsv with "
        "sentence-transformers' trainer: MultipleNegativesRankingLoss (in-batch negatives plus hard negatives, the "
        "best BM25 hits of each query in --index that are not judged relevant). Paper texts come from --index, which "
        "must hold the corpus. Held-out queries are scored before and after (NDCG@10, MRR@10, Recall@100) over their "
        "relevant papers plus each one's BM25 top K (--candidates): a rerank-style estimate, not a whole-corpus evaluation. "
        "The folder --out is a model any --model accepts; `mmrag migrate --index ALIAS --to-model OUT` puts it live. "
        "Without a GPU this runs on the CPU in fp32 (fp16 mixed precision on cuda only): SciFact's 809 training "
        "queries take minutes with the defaults.",
    )
    p.add_argument("--base", default="minilm", help="the model to start from: minilm, mpnet, or a sentence-transformers "
                   "name or folder (default: minilm)")
    p.add_argument("--train", required=True, metavar="BEIR_DIR", help="a BEIR folder: queries.jsonl and qrels/SPLIT.tsv")
    p.add_argument("--split", default="train", help="the qrels split to train on (default: train)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the tuned model goes (a new or empty folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--index", default="papers", help="the alias (or index) holding the corpus (default: papers)")
    p.add_argument("--epochs", type=float, default=defaults.epochs, help=f"passes over the pairs (default: {defaults.epochs:g})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"pairs per step; the other rows of a batch are each query's in-batch negatives (default: {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.learning_rate,
                   help=f"peak learning rate, after a linear warm-up over the first 10%% of the steps (default: {defaults.learning_rate:g})")
    p.add_argument("--hard-negatives", type=int, default=defaults.hard_negatives, metavar="N",
                   help=f"BM25 hard negatives per pair; 0: in-batch negatives only (default: {defaults.hard_negatives})")
    p.add_argument("--skip-top", type=int, default=defaults.skip_top, metavar="N",
                   help="pass over each query's first N non-relevant BM25 hits before taking hard negatives: with sparse "
                        "judgments the very best hits are often relevant but unjudged (default: 0)")
    p.add_argument("--pairs-per-query", type=int, default=defaults.pairs_per_query, metavar="N",
                   help="train on a seeded N of each query's judged papers, so that heavily judged queries do not "
                        "crowd out the rest; 0: all (default: 0)")
    p.add_argument("--loss", choices=["mnrl", "gist"], default=defaults.loss,
                   help="mnrl: MultipleNegativesRankingLoss; gist: GISTEmbedLoss, which drops the negatives a frozen "
                        "guide model scores above the positive (unjudged relevant papers); for judgments with many "
                        "relevant papers per query (default: mnrl)")
    p.add_argument("--guide", metavar="MODEL", help="the guide model of --loss gist (default: --base)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--eval-split", metavar="SPLIT", help="score on this qrels split (e.g. dev) instead of holding out "
                      "training queries; training queries judged in it are left out of training")
    held.add_argument("--held-out", type=float, default=defaults.held_out, metavar="FRACTION",
                      help=f"fraction of the training queries kept out of training and scored (seeded; 0: no report; "
                           f"default: {defaults.held_out:g})")
    p.add_argument("--candidates", type=int, default=defaults.candidates, metavar="K",
                   help=f"BM25 hits of each held-out query added to the held-out corpus (default: {defaults.candidates})")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N training steps (overrides --epochs)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"for the held-out sample and training (default: {defaults.seed})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train: auto = cuda when available, else the CPU (fp32 there; fp16 mixed precision on cuda)")
    p.add_argument("--url", help="OpenSearch URL (default: $OPENSEARCH_URL or http://localhost:9200)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from ..tuning import TuneConfig, check_out_folder, tune

    config = TuneConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                        hard_negatives=args.hard_negatives, max_steps=args.max_steps, seed=args.seed, candidates=args.candidates,
                        skip_top=args.skip_top, pairs_per_query=args.pairs_per_query, loss=args.loss, guide=args.guide,
                        held_out=0.0 if args.eval_split else args.held_out, eval_split=args.eval_split)
    config.validate()  # bad options fail before any progress bar shows
    check_out_folder(Path(args.out), args.overwrite)
    with _progress(transient=True) as progress:
        phase = progress.add_task("reading judgments and mining BM25 negatives", total=None, rate="")
        task, started = None, 0.0

        def on_phase(message: str) -> None:
            progress.update(phase, description=escape(message))

        def on_step(done: int, total: int) -> None:
            nonlocal task, started
            if task is None:
                started = time.perf_counter()
                progress.update(phase, visible=False)
                task = progress.add_task("training", total=total, rate="")
            elapsed = time.perf_counter() - started
            progress.update(task, completed=done, total=total, rate=f"{elapsed / done:.1f} s/step" if done else "")

        report = tune(args.base, args.train, args.out, settings=ConnectionSettings.from_env(args.url), index=args.index,
                      split=args.split, config=config, device=args.device, overwrite=args.overwrite,
                      on_step=on_step, on_phase=on_phase)
    if args.json:
        _print_json(report.to_dict())
        return 0
    counts = report.counts
    console.print(f"Tuned {escape(report.base)} on {counts['pairs']} pairs ({counts['train_queries']} queries, "
                  f"{counts['hard_negatives']} hard negatives) in {report.steps} steps, {report.seconds['total']:.0f}s "
                  f"on {report.device}: {escape(report.out)}")
    if counts["missing_docs"]:
        err_console.print(f"[yellow]{counts['missing_docs']} judged papers are not in {escape(report.index)}; their pairs were left out[/]")
    if not report.held_out:
        console.print("no held-out queries: nothing scored")
        return 0
    table = Table(title=f"Held-out: {counts['held_out_queries']} queries over {counts['held_out_corpus']} papers "
                        f"({escape(report.held_out_source)})")
    table.add_column("model")
    names = list(report.held_out["base"])
    for name in names:
        table.add_column(name, justify="right")
    for which, metrics in report.held_out.items():
        table.add_row(which, *(f"{metrics[name]:.4f}" for name in names))
    gain = {name: report.held_out["tuned"][name] - report.held_out["base"][name] for name in names}
    table.add_row("change", *(f"{gain[name]:+.4f}" for name in names))
    console.print(table)
    return 0
