"""`mmrag migrate`: run (with an optional relevance gate), swap a gated run, rollback, cleanup."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ..connection import ConnectionSettings, make_client
from ..errors import MMRagError
from .commands import _print_json, _progress, console, err_console

if TYPE_CHECKING:
    from ..migration import MigrationState

BOOKKEEPING = ("marks", "frozen_marks", "swap_marks", "terms", "buckets", "lease_owner", "lease_process", "lease_expires",
               "save_id", "fence", "updated_at", "gate_spec", "gate")


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
    resume = args.action == "swap" or args.resume
    if args.action == "swap":
        _from_recorded_run(args, _gated_run(args, settings), settings)
    elif resume and not (args.to_model and args.to_precision):
        _from_recorded_run(args, _interrupted_run(args, settings), settings)
    if not args.to_model:
        raise MMRagError("migrate needs --to-model NAME (minilm, mpnet, or a sentence-transformers name or path; "
                         "the index's own model with --to-precision to change only the precision)")
    gate = _gate_spec(args)
    with _progress() as progress:
        tasks: dict[str, Any] = {}
        started = time.perf_counter()

        def on_progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                label = "relevance gate: queries" if phase == "gate" else phase
                tasks[phase] = progress.add_task(label, total=total, rate="")
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:.1f} docs/s" if phase == "copy" and elapsed > 0 else ""
            progress.update(tasks[phase], completed=done, total=total, rate=rate)

        overrides = {key: value for key, value in (("number_of_shards", args.shards), ("number_of_replicas", args.replicas))
                     if value is not None}
        migrator = migration.Migrator(args.index, args.to_model, settings=settings, index_settings=overrides,
                                      on_progress=on_progress, to_precision=args.to_precision, device=args.device,
                                      processes=args.processes, workers=args.workers, executor=args.executor,
                                      ray_address=args.ray_address, vector_encoding=args.vector_encoding,
                                      gate=gate, force=args.force, reduce_dim=args.reduce_dim)
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
        try:
            state = migrator.run(resume=resume)
        except migration.GateRefused as refused:
            progress.stop()
            _print_gate(args, refused.details.get("gate", {}), refused.details)
            raise
    seconds = time.perf_counter() - started
    report = {**state.to_dict(), "seconds": round(seconds, 1), "docs_per_second": round(state.copied / seconds, 2) if seconds else 0}
    if args.json:
        _print_json(report)
    else:
        _key_value_table(f"Migrated {args.index}", {k: v for k, v in report.items() if k not in BOOKKEEPING})
        if state.gate:
            _print_gate(args, state.gate)
    return 0


def _gated_run(args: argparse.Namespace, settings: ConnectionSettings) -> "MigrationState":
    """`swap`: the run the gate refused; refused without --force, or when no run is gated."""
    state = _load_state(args, settings)
    if state is None or state.status != "gated":
        raise MMRagError(f"No migration of {args.index!r} was refused by the relevance gate"
                         f"{f' (it is {state.status})' if state else ''}; `mmrag migrate --resume` continues an interrupted one.")
    if not args.force:
        raise MMRagError(f"The relevance gate refused {state.target_index} ({state.message}); "
                         "add --force to swap it in anyway.")
    return state


def _interrupted_run(args: argparse.Namespace, settings: ConnectionSettings) -> "MigrationState":
    """`--resume`: the recorded run it continues (a failed verification or a refused gate included)."""
    from ..migration.state import UNFINISHED

    state = _load_state(args, settings)
    if state is None or (state.status not in UNFINISHED and state.status != "gated"):
        raise MMRagError(f"No interrupted migration of {args.index!r} to resume"
                         f"{f' (the last one is {state.status})' if state else ''}.")
    return state


def _from_recorded_run(args: argparse.Namespace, state: "MigrationState", settings: ConnectionSettings) -> None:
    """The model (and precision) of the recorded run where the options leave them out; one that differs is
    refused by the run itself."""
    from .. import store

    args.to_model = args.to_model or state.to_model
    if args.to_precision is None:
        with store.translated(settings.safe_url, f"reading {state.target_index}"):
            client = make_client(settings)
            spec = store.spec_of(client, state.target_index) if client.indices.exists(index=state.target_index) else None
        # The precision the target was created for. Before it exists only a state that records it can tell.
        args.to_precision = getattr(state, "to_precision", None) or (spec.precision if spec else None)


def _load_state(args: argparse.Namespace, settings: ConnectionSettings) -> "MigrationState | None":
    from .. import migration, store

    with store.translated(settings.safe_url, f"reading the migration of {args.index}"):
        return migration.load_state(make_client(settings), args.index)


def _gate_spec(args: argparse.Namespace):
    from ..migration import GateSpec

    if args.gate and args.gate_titles:
        raise MMRagError("--gate and --gate-titles go separately: judgments, or titles as queries when there are none")
    if not (args.gate or args.gate_titles):
        return None
    modes = tuple(m.strip() for m in args.gate_modes.split(",") if m.strip())
    return GateSpec(judgments=args.gate, split=args.split, mode=args.gate_mode, modes=modes, max_drop=args.max_drop,
                    titles=args.gate_titles or 50, recipe=args.gate_recipe)


def _print_gate(args: argparse.Namespace, gate: dict[str, Any], details: dict[str, Any] | None = None) -> None:
    """The gate's report: as part of --json (the whole state, on a refusal too), else a table per mode."""
    if args.json:
        if details is not None:
            _print_json(details)
        return
    if not gate.get("source"):
        return
    deciding = gate["spec"]["mode"]
    table = Table(title=f"Relevance gate: {gate['queries']} queries "
                        f"({'judged, ' + gate['spec']['split'] if gate['spec'].get('judgments') else 'titles of the index'})")
    for column in ("mode", "metric", "old index", "new index", "change", "top-10 overlap"):
        table.add_column(column, justify="left" if column in ("mode", "metric") else "right")
    for mode, metrics in gate["source"].items():
        for metric, before in metrics.items():
            after = gate["target"][mode][metric]
            table.add_row(f"{mode}{' (decides)' if mode == deciding else ''}", metric, f"{before:.4f}", f"{after:.4f}",
                          f"{after - before:+.4f}", f"{gate['overlap_at_10'][mode]:.2f}")
    (console if gate.get("passed") else err_console).print(table)
    verdict = "passed" if gate.get("passed") else "[red]refused[/]"
    (console if gate.get("passed") else err_console).print(f"gate {verdict}: {escape(gate.get('reason', ''))}")


def _key_value_table(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(key, escape(str(value)))
    console.print(table)
