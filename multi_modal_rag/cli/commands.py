"""The `mmrag` commands: each takes the parsed arguments, prints a table (or JSON with --json), returns an exit code."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..connection import ConnectionSettings, make_client
from ..errors import ConnectionFailedError, MMRagError
from ..results import IndexResult, IndexSummary
from ..search import HybridSettings, SearchFilters

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, for people and grep


def _manager(args: argparse.Namespace, model: str | None = None):
    from ..manager import OpenSearchManager

    hybrid = HybridSettings()
    if getattr(args, "recipe", None):  # a fusion recipe file (mmrag eval --tune --recipe-out)
        from ..search.recipes import load_recipe

        hybrid = load_recipe(args.recipe).settings(hybrid)
    hybrid = replace(hybrid, **{k: v for k, v in (("bm25_weight", getattr(args, "bm25_weight", None)),
                                                  ("knn_weight", getattr(args, "knn_weight", None))) if v is not None})
    overrides = {key: getattr(args, key) for key in ("engine", "vector_encoding") if getattr(args, key, None)}
    return OpenSearchManager(
        args.index, model, settings=ConnectionSettings.from_env(args.url), hybrid=hybrid, spec_overrides=overrides,
        device=getattr(args, "device", "auto"), precision=getattr(args, "precision", None),
        processes=getattr(args, "processes", 1), shards=getattr(args, "shards", None),
        replicas=getattr(args, "replicas", None), reduce_dim=getattr(args, "reduce_dim", None),
    )


def parse_filters(values: Sequence[str]) -> SearchFilters:
    """`year=2019..2021`, `year=2020`, `category=cs.IR`, `author=Jane Doe`, `source=arxiv` (repeatable)."""
    year_from = year_to = None
    lists: dict[str, list[str]] = {"category": [], "author": [], "source": []}
    for value in values:
        key, sep, rest = value.partition("=")
        key = key.strip().lower().rstrip("s")
        if not sep or not rest.strip():
            raise MMRagError(f"--filter {value!r}: expected KEY=VALUE with KEY one of year, category, author, source")
        if key == "year":
            low, dots, high = rest.partition("..")
            try:
                year_from = int(low) if low.strip() else None
                year_to = (int(high) if high.strip() else None) if dots else year_from
            except ValueError:
                raise MMRagError(f"--filter {value!r}: year must be YYYY or YYYY..YYYY") from None
        elif key in lists:
            lists[key].append(rest.strip())
        else:
            raise MMRagError(f"--filter {value!r}: unknown key {key!r}; use year, category, author or source")
    return SearchFilters(year_from, year_to, tuple(lists["category"]), tuple(lists["author"]), tuple(lists["source"]))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


# ---- commands ---------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    from ..documents import read_papers

    manager = _manager(args, args.model)
    readers = [read_papers(path) for path in args.paths]  # every path checked before any work
    _fit_projection(manager, itertools.chain.from_iterable(read_papers(path) for path in args.paths))
    if args.workers > 1:
        summary = _index_with_workers(args, manager)
    else:
        summary = _index_here(args, manager, itertools.chain.from_iterable(readers))
    if args.json:
        _print_json({"index": manager.alias, "model": manager.model_name, "precision": manager.binding.precision,
                     **summary.to_dict()})
    else:
        table = Table(title=f"Indexed into {manager.alias}", show_header=True)
        table.add_column("outcome")
        table.add_column("papers", justify="right")
        for name in ("created", "updated", "skipped", "failed"):
            table.add_row(name, str(getattr(summary, name)))
        table.add_row("chunks", str(summary.chunks))
        table.add_row("docs/s", f"{summary.docs_per_second:.1f}")
        console.print(table)
        for reason, count in summary.failure_reasons().most_common():
            console.print(f"  {count} failed: {escape(reason)}")
    return 1 if summary.failed and not summary.indexed and not summary.skipped else 0


def _fit_projection(manager, records) -> None:
    """--reduce-dim N for a new index: its PCA projection, fitted on the first papers of the input, before it exists."""
    from ..documents import Paper
    from ..projection import SAMPLE_PAPERS

    if manager.binding.reduce_dim is None:
        return
    with _progress(transient=True) as progress:
        progress.add_task(f"fitting the --reduce-dim {manager.binding.reduce_dim} projection", total=None, rate="")
        manager.fit_projection(itertools.islice((p for p in records if isinstance(p, Paper)), SAMPLE_PAPERS))


def _index_here(args: argparse.Namespace, manager, papers) -> IndexSummary:
    from ..documents import count_records

    counts = [count_records(path) for path in args.paths]
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("indexing", total=None if None in counts else sum(counts), rate="")

        def on_result(result: IndexResult, summary: IndexSummary) -> None:
            if result.outcome == "failed" and not args.json:
                err_console.print(f"[yellow]failed[/] {escape(result.origin or str(result.doc_id))}: {escape(str(result.reason))}")
            done = summary.indexed + summary.skipped + summary.failed
            elapsed = time.perf_counter() - started
            progress.update(task, completed=done, rate=f"{done / elapsed:.1f} docs/s" if elapsed > 0 else "")

        try:
            return manager.index_all(papers, pending=args.pending, on_result=on_result)
        finally:
            manager.close()  # the encoding processes, if --processes started them


def _index_with_workers(args: argparse.Namespace, manager) -> IndexSummary:
    """--workers N: the input cut into N units by paper id, each indexed (with --pending) by a worker process."""
    from ..parallel import index_in_parallel, units_for

    if args.processes > 1:
        raise MMRagError("--workers and --processes do not combine: each worker is a process of its own")
    manager.binding.ensure_index()  # created once, here, not raced by the workers
    options = {"device": args.device, "precision": manager.binding.index_spec.precision}
    units = units_for(args.paths, args.workers, alias=manager.alias, model=manager.model_name,
                      settings=manager.binding.settings, options=options)
    with _progress(transient=True) as progress:
        progress.add_task(f"indexing with {args.workers} {args.executor} workers", total=None, rate="")
        summary = index_in_parallel(units, executor=args.executor, ray_address=args.ray_address)
    manager.refresh()
    if not args.json:
        for failure in summary.failures:
            err_console.print(f"[yellow]failed[/] {escape(failure.origin or str(failure.doc_id))}: {escape(str(failure.reason))}")
    return summary


def cmd_search(args: argparse.Namespace) -> int:
    manager = _manager(args, args.model)
    mode = args.mode or _recipe_mode(args) or "hybrid"
    hits = manager.search(
        args.query, mode=mode, size=args.size, filters=parse_filters(args.filter), rerank=args.rerank, rerank_top=args.rerank_top
    )
    if args.json:
        _print_json([{k: v for k, v in hit.to_dict().items() if k != "source"} | {"year": hit.source.get("year")} for hit in hits])
        return 0
    table = Table(title=f"{mode} search in {manager.alias}: {escape(args.query[:80])}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if args.rerank:
        table.add_column("rerank", justify="right")
    table.add_column("id")
    table.add_column("title / best passage", ratio=1)
    for rank, hit in enumerate(hits, start=1):
        cells = [str(rank), f"{hit.score:.4f}"]
        if args.rerank:
            cells.append(f"{hit.rerank_score:.4f}")
        cells += [escape(hit.id), f"[bold]{escape(hit.title)}[/]\n{escape(hit.passage[:300])}"]
        table.add_row(*cells)
    console.print(table if hits else "[yellow]no results[/]")
    return 0


def _recipe_mode(args: argparse.Namespace) -> str | None:
    from ..search.recipes import load_recipe

    return load_recipe(args.recipe).mode if getattr(args, "recipe", None) else None


def cmd_status(args: argparse.Namespace) -> int:
    status = _manager(args).status()
    if args.json:
        _print_json(status.to_dict())
        return 0
    table = Table(title=f"Index status: {args.index}", show_header=False)
    for key, value in status.to_dict().items():
        table.add_row(key, str(value))
    console.print(table)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import REGISTRY, fetch_model, model_path

    if args.models_command == "fetch":
        folder = fetch_model(args.name, on_step=lambda msg: err_console.print(f"[dim]{escape(msg)}[/]"))
        console.print(f"{args.name} ready at {folder}")
        return 0
    table = Table(title="Registered models (any other sentence-transformers name or path works too)")
    for column in ("name", "model", "dim", "status"):
        table.add_column(column)
    for entry in REGISTRY.values():
        try:
            status = f"ready ({model_path(entry.short_name)})"
        except MMRagError as exc:
            status = str(exc)
        table.add_row(entry.short_name, entry.full_name, str(entry.dimension), escape(status))
    console.print(table)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from .. import devtools as local_node

    if args.nodes != 1:
        return _cmd_cluster(args)
    cache = Path(args.cache_dir) if args.cache_dir else None
    if args.node_command == "start":
        started = time.perf_counter()
        status = local_node.start_node(cache, port=args.port, heap=args.heap or "1g",
                                       on_step=lambda msg: err_console.print(f"[dim]{escape(msg)}[/]"))
        console.print(f"OpenSearch {status.version} is up at {status.url} (health {status.health}, {time.perf_counter() - started:.0f}s)")
        return 0
    if args.node_command == "stop":
        stopped = local_node.stop_node(cache, port=args.port)
        console.print("node stopped" if stopped else "no node of ours was running")
        return 0
    status = local_node.node_status(cache, port=args.port)
    if args.json:
        _print_json({**status.__dict__, "home": str(status.home) if status.home else None})
        return 0 if status.running else 1
    table = Table(title="Local OpenSearch node", show_header=False)
    for key in ("url", "running", "version", "health", "plugins", "pid", "home"):
        value = getattr(status, key)
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    return 0 if status.running else 1


def _cmd_cluster(args: argparse.Namespace) -> int:
    from ..devtools import local_cluster

    cache = Path(args.cache_dir) if args.cache_dir else None
    where = {"first_port": args.port, "nodes": args.nodes}
    if args.node_command == "start":
        started = time.perf_counter()
        status = local_cluster.start_cluster(cache, heap=args.heap or local_cluster.CLUSTER_HEAP,
                                             on_step=lambda msg: err_console.print(f"[dim]{escape(msg)}[/]"), **where)
        console.print(f"{status.number_of_nodes}-node cluster {status.name} is up (health {status.health}, "
                      f"{time.perf_counter() - started:.0f}s)\nOPENSEARCH_URL={status.url}")
        return 0
    if args.node_command == "stop":
        stopped = local_cluster.stop_cluster(cache, **where)
        console.print(f"{stopped} cluster node(s) stopped")
        return 0
    status = local_cluster.cluster_status(cache, **where)
    running = sum(node.running for node in status.nodes)
    if args.json:
        _print_json({"name": status.name, "url": status.url, "health": status.health, "number_of_nodes": status.number_of_nodes,
                     "nodes": [{**n.__dict__, "home": str(n.home) if n.home else None} for n in status.nodes]})
        return 0 if running == len(status.nodes) else 1
    table = Table(title=f"Local cluster {status.name}: health {status.health}, {status.number_of_nodes} nodes joined")
    for column in ("url", "running", "version", "pid"):
        table.add_column(column)
    for node in status.nodes:
        table.add_row(node.url, str(node.running), str(node.version), str(node.pid))
    console.print(table)
    return 0 if running == len(status.nodes) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import tempfile

    import uvicorn

    from ..connection import is_loopback
    from ..serve import ServeConfig, create_app, load_api_keys
    from ..serve.config import CONFIG_VARIABLE

    config = ServeConfig(alias=args.index, url=args.url, rerank_model=args.rerank_model,
                         api_keys=load_api_keys(args.api_keys_file), max_size=args.max_size, max_papers=args.max_papers,
                         batch_wait_ms=args.batch_wait_ms, query_cache_size=args.query_cache,
                         recipe=str(Path(args.recipe).resolve()) if args.recipe else None)
    config.hybrid_settings()  # a bad recipe file fails here, in one line, not in each worker
    if not config.api_keys and not is_loopback(f"//{args.host}"):
        err_console.print(f"[yellow]warning:[/] serving on {escape(args.host)} without API keys: anyone who can reach "
                          "it can search, index and delete; set MMRAG_API_KEYS or --api-keys-file")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise MMRagError("--ssl-certfile and --ssl-keyfile go together")
    options = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_level": "info",
               "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    if args.workers > 1:  # each worker process builds its app from the environment
        os.environ[CONFIG_VARIABLE] = config.to_env()
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="mmrag-metrics-"))
        uvicorn.run("multi_modal_rag.serve:create_app", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(config), **options)
    return 0
