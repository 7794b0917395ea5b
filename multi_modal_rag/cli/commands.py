"""The `mmrag` commands: each takes the parsed arguments, prints a table (or JSON with --json), returns an exit code."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..connection import ConnectionSettings, make_client
from ..errors import ConnectionFailedError, MMRagError
from ..results import IndexResult, IndexSummary
from ..search import SEARCH_MODES, HybridSettings, SearchFilters

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, for people and grep


def _manager(args: argparse.Namespace, model: str | None = None):
    from ..manager import OpenSearchManager

    hybrid = HybridSettings(
        **{k: v for k, v in (("bm25_weight", getattr(args, "bm25_weight", None)), ("knn_weight", getattr(args, "knn_weight", None))) if v is not None}
    )
    overrides = {key: getattr(args, key) for key in ("engine", "vector_encoding") if getattr(args, key, None)}
    return OpenSearchManager(
        args.index, model, settings=ConnectionSettings.from_env(args.url), hybrid=hybrid, spec_overrides=overrides,
        device=getattr(args, "device", "auto"), precision=getattr(args, "precision", None),
        processes=getattr(args, "processes", 1), shards=getattr(args, "shards", None),
        replicas=getattr(args, "replicas", None),
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
    hits = manager.search(
        args.query, mode=args.mode, size=args.size, filters=parse_filters(args.filter), rerank=args.rerank, rerank_top=args.rerank_top
    )
    if args.json:
        _print_json([{k: v for k, v in hit.to_dict().items() if k != "source"} | {"year": hit.source.get("year")} for hit in hits])
        return 0
    table = Table(title=f"{args.mode} search in {manager.alias}: {escape(args.query[:80])}", show_lines=True)
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


def cmd_eval(args: argparse.Namespace) -> int:
    from ..documents import count_records, read_papers
    from ..evaluation import evaluate, load_qrels, load_queries

    beir = Path(args.beir_dir)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SEARCH_MODES]
    if unknown:
        raise MMRagError(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(SEARCH_MODES)}")
    queries, qrels = load_queries(beir), load_qrels(beir, args.split)
    k_values = _cutoffs(args.k)
    size = max([100, *(k_values or [])])
    manager = _manager(args, args.model)
    with _progress(transient=True) as progress:
        task = progress.add_task("indexing corpus (pending mode)", total=count_records(beir, "beir"), rate="")
        failed = 0
        for result in manager.index_documents(read_papers(beir, "beir"), pending=True):
            failed += result.outcome == "failed"
            progress.advance(task)
        manager.refresh()
        report: dict[str, dict[str, float]] = {}
        judged = [q for q in qrels if q in queries]
        for mode in modes:
            task = progress.add_task(f"{mode} queries", total=len(judged), rate="")
            run = {}
            for query_id in judged:
                hits = manager.search(queries[query_id], mode=mode, size=size, rerank=args.rerank, rerank_top=args.rerank_top, passages=0)
                run[query_id] = {hit.id: (hit.rerank_score if args.rerank else hit.score) for hit in hits}
                progress.advance(task)
            report[mode] = evaluate(run, {q: qrels[q] for q in judged}, k_values=k_values,
                                    ignore_identical_ids=not args.keep_identical_ids)
    if failed:
        err_console.print(f"[yellow]{failed} corpus records failed to index[/]")
    if args.json:
        _print_json(report)
        return 0
    table = Table(title=f"{beir.name} {args.split}: {len(judged)} queries, model {manager.model_name}")
    table.add_column("mode")
    names = list(next(iter(report.values()), {}))
    for metric in names:
        table.add_column(metric, justify="right")
    for mode, metrics in report.items():
        table.add_row(mode, *(f"{metrics[m]:.4f}" for m in names))
    console.print(table)
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


def cmd_migrate(args: argparse.Namespace) -> int:
    from .. import migration, store

    settings = ConnectionSettings.from_env(args.url)
    if args.action in ("rollback", "cleanup"):
        client = make_client(settings)
        with store.translated(settings.safe_url, f"migrate {args.action} of {args.index}"):
            if args.action == "rollback":
                state = migration.rollback(client, args.index)
                message = f"alias {args.index} points at {state.source_index} again"
            else:
                deleted = migration.cleanup(client, args.index)
                message = f"deleted {', '.join(deleted)}" if deleted else "nothing to delete"
        _print_json({"action": args.action, "message": message}) if args.json else console.print(message)
        return 0
    if not args.to_model:
        raise MMRagError("migrate needs --to-model NAME (minilm, mpnet, or a sentence-transformers name or path; "
                         "the index's own model with --to-precision to change only the precision)")
    with _progress() as progress:
        tasks: dict[str, Any] = {}
        started = time.perf_counter()

        def on_progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total, rate="")
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:.1f} docs/s" if phase == "copy" and elapsed > 0 else ""
            progress.update(tasks[phase], completed=done, total=total, rate=rate)

        overrides = {key: value for key, value in (("number_of_shards", args.shards), ("number_of_replicas", args.replicas))
                     if value is not None}
        migrator = migration.Migrator(args.index, args.to_model, settings=settings, index_settings=overrides,
                                      on_progress=on_progress, to_precision=args.to_precision, device=args.device,
                                      processes=args.processes, workers=args.workers, executor=args.executor,
                                      ray_address=args.ray_address, vector_encoding=args.vector_encoding)
        if args.dry_run:
            try:
                plan = migrator.plan()
            finally:
                migrator.close()
            progress.stop()
            if args.json:
                _print_json(plan.to_dict())
            else:
                _key_value_table(f"Migration plan for {args.index} (dry run: nothing changed)", plan.to_dict())
            return 0
        state = migrator.run(resume=args.resume)
    seconds = time.perf_counter() - started
    report = {**state.to_dict(), "seconds": round(seconds, 1), "docs_per_second": round(state.copied / seconds, 2) if seconds else 0}
    if args.json:
        _print_json(report)
    else:
        bookkeeping = ("marks", "frozen_marks", "swap_marks", "lease_owner", "lease_expires", "updated_at")
        _key_value_table(f"Migrated {args.index}", {k: v for k, v in report.items() if k not in bookkeeping})
    return 0


def _key_value_table(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(key, escape(str(value)))
    console.print(table)


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
                         batch_wait_ms=args.batch_wait_ms, query_cache_size=args.query_cache)
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
