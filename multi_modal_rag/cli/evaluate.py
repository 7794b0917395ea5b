"""`mmrag eval`: score the search modes on a BEIR dataset, or tune how hybrid and rrf fuse BM25 and kNN."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..errors import MMRagError
from ..search import SEARCH_MODES
from .commands import _fit_projection, _manager, _print_json, _progress, console, err_console

TUNE_METRIC = "NDCG@10"


def cmd_eval(args: argparse.Namespace) -> int:
    from ..documents import read_papers
    from ..evaluation import evaluate, load_qrels, load_queries, search_run
    from ..search.recipes import load_recipe

    beir = Path(args.beir_dir)
    _check_options(args)
    recipe = load_recipe(args.recipe) if getattr(args, "recipe", None) else None
    modes = _modes(args.modes, recipe.mode if recipe else None)
    queries, qrels = load_queries(beir), load_qrels(beir, args.split)
    k_values = _cutoffs(args.k)
    size = max([100, *(k_values or [])])
    manager = _manager(args, args.model)
    _fit_projection(manager, read_papers(beir, "beir"))
    judged = [q for q in qrels if q in queries]
    with _progress(transient=True) as progress:
        failed = _index_corpus(manager, beir, progress)
        if getattr(args, "tune", False):
            return _tune(args, manager, beir, {q: queries[q] for q in judged}, {q: qrels[q] for q in judged},
                         size, k_values, progress, failed)
        report: dict[str, dict[str, float]] = {}
        for mode in modes:
            task = progress.add_task(f"{mode} queries", total=len(judged), rate="")
            run = search_run(manager, {q: queries[q] for q in judged}, mode=mode, size=size,
                             on_query=lambda: progress.advance(task), rerank=args.rerank, rerank_top=args.rerank_top)
            report[mode] = evaluate(run, {q: qrels[q] for q in judged}, k_values=k_values,
                                    ignore_identical_ids=not args.keep_identical_ids)
    _warn_failed(failed)
    if args.json:
        _print_json(report)
        return 0
    title = f"{beir.name} {args.split}: {len(judged)} queries, model {manager.model_name}"
    if recipe:
        title += f", recipe {recipe.label()}"
    table = Table(title=escape(title))
    table.add_column("mode")
    names = list(next(iter(report.values()), {}))
    for metric in names:
        table.add_column(metric, justify="right")
    for mode, metrics in report.items():
        table.add_row(mode, *(f"{metrics[m]:.4f}" for m in names))
    console.print(table)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    tune = getattr(args, "tune", False)
    if not tune:
        if getattr(args, "recipe_out", None):
            raise MMRagError("--recipe-out goes with --tune (it is where the tuned recipe is written)")
        return
    if args.split == "test":
        raise MMRagError("--tune chooses fusion parameters, so it must not see the test split: tune on train or dev "
                         "(--split train), then score the recipe on test with --recipe FILE")
    if getattr(args, "recipe", None):
        raise MMRagError("--tune chooses a recipe and --recipe evaluates one: give one of them")
    if args.rerank:
        raise MMRagError("--tune scores the fusion itself, before any reranking: leave out --rerank")
    if args.modes:
        raise MMRagError("--modes does not apply with --tune: it scores every hybrid and rrf recipe of its grid")


def _modes(value: str | None, recipe_mode: str | None) -> list[str]:
    if not value:
        return [recipe_mode] if recipe_mode else list(SEARCH_MODES)
    modes = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SEARCH_MODES]
    if unknown:
        raise MMRagError(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(SEARCH_MODES)}")
    return modes


def _index_corpus(manager, beir: Path, progress) -> int:
    from ..documents import count_records, read_papers

    task = progress.add_task("indexing corpus (pending mode)", total=count_records(beir, "beir"), rate="")
    failed = 0
    for result in manager.index_documents(read_papers(beir, "beir"), pending=True):
        failed += result.outcome == "failed"
        progress.advance(task)
    manager.refresh()
    return failed


def _warn_failed(failed: int) -> None:
    if failed:
        err_console.print(f"[yellow]{failed} corpus records failed to index[/]")


def _tune(args, manager, beir: Path, queries: dict[str, str], qrels, size: int, k_values, progress, failed: int) -> int:
    """Fetch each query's BM25 and kNN hits once, fuse them client-side by every recipe of the grid, keep the best."""
    from ..search.recipes import Recipe, fetch_candidates, recipe_grid, save_recipe, score_recipes

    if not queries:
        raise MMRagError(f"{beir} {args.split}: no judged query has its text in queries.jsonl; nothing to tune on")
    task = progress.add_task("BM25 and kNN hits", total=len(queries), rate="")
    candidates = fetch_candidates(manager.searcher, queries, size=size, on_batch=lambda n: progress.advance(task, n))
    grid = recipe_grid()
    task = progress.add_task("scoring recipes", total=len(grid), rate="")
    ranked = score_recipes(candidates, qrels, grid, size=size, k_values=k_values, metric=TUNE_METRIC,
                           ignore_identical_ids=not args.keep_identical_ids, on_recipe=lambda: progress.advance(task))
    progress.stop()
    _warn_failed(failed)
    best = ranked[0]
    tuned_on = {"dataset": beir.name, "split": args.split, "queries": len(queries), "model": manager.model_name,
                "index": manager.alias, "window": size, TUNE_METRIC: best.metrics[TUNE_METRIC], "grid": len(grid)}
    recipe = Recipe(**{**best.recipe.__dict__, "tuned_on": tuned_on})
    written = str(save_recipe(recipe, args.recipe_out)) if args.recipe_out else None
    default_rank, default = next((i, t) for i, t in enumerate(ranked, start=1) if t.recipe == Recipe())
    top = ranked[: args.top]
    if args.json:
        _print_json({"best": recipe.to_dict(), "top": [t.to_dict() for t in top],
                     "default": {"rank": default_rank, **default.to_dict()}, "recipe_out": written})
        return 0
    table = Table(title=escape(f"{beir.name} {args.split}: {len(queries)} queries, model {manager.model_name}, "
                               f"{len(grid)} recipes by {TUNE_METRIC}"))
    table.add_column("#", justify="right")
    table.add_column("recipe")
    names = list(best.metrics)
    for metric in names:
        table.add_column(metric, justify="right")
    rows: list[tuple[Any, ...]] = [(i, t) for i, t in enumerate(top, start=1)]
    if default_rank > len(top):
        rows.append((default_rank, default))
    for rank, tuned in rows:
        label = tuned.recipe.label() + (" (default)" if tuned.recipe == Recipe() else "")
        table.add_row(str(rank), escape(label), *(f"{tuned.metrics[m]:.4f}" for m in names))
    console.print(table)
    if written:
        console.print(f"recipe written to {escape(written)}; use it with --recipe {escape(written)} "
                      "(mmrag search, serve, and eval on the test split)")
    else:
        console.print("best recipe not saved: add --recipe-out FILE to write it")
    return 0


def _cutoffs(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        cutoffs = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise MMRagError(f"--k {value!r}: give cutoffs as whole numbers separated by commas, e.g. 1,10,100") from None
    if not cutoffs or min(cutoffs) < 1:
        raise MMRagError(f"--k {value!r}: cutoffs must be 1 or more")
    return cutoffs
