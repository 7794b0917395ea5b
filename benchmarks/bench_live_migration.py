"""Repeated model migrations of a live index: lost writes, failed reads, the write pause, and the time each takes.

    python benchmarks/bench_live_migration.py [--docs N] [--migrations 10] [--rate 5] [--to-model NAME] [--faults]
                                              [--mpnet 2] [--json]   (uses $OPENSEARCH_URL)

Index --docs papers with minilm behind a scratch alias, start one writer (inserts, updates, deletes at
--rate per second) and one reader through the alias, and migrate it --migrations times, alternating
minilm <-> --to-model (default: a rotated copy of MiniLM, a change of model at the same dimension),
cleaning up the old index after each swap. Every acknowledged write is checked after each migration
and once more after the traffic stops. With --quiet-too (default) one more migration of --docs papers
runs on an index with no traffic.

With --faults each migration meets one fault, in turn: a crash at a random step then `--resume`; the run paused
(SIGSTOP, in its own process) right before the swap past its lease, a `rollback`, then woken; the run paused
mid-copy while a `--resume` finishes it, then woken; bulks through the alias in flight when the block lands; a
partial `_update` through the alias during the catch-up. A woken run must stop without acting; the bulks and the
partial update are checked too. --mpnet N adds N migrations (to mpnet and back) at the end, with faults as well.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import drop, emit, load_papers, make_client, median, parser, save, scratch_index, settings

import random
import threading

from multi_modal_rag import OpenSearchManager, migration, store
from multi_modal_rag.devtools import paused_run
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.devtools.traffic import History, LiveTraffic
from multi_modal_rag.migration import state as lease

POOL = 1000  # papers the writer may insert; once used up, inserts become updates
FAULTS = ("crash-resume", "paused-before-swap-rollback", "paused-mid-copy-resume", "bulks-in-flight", "partial-update")
LEASE = 10.0  # seconds: the lease of the runs here (the default 60 s would only make the paused faults slower)


class Crash(Exception):
    pass


def raw_writes(client, alias: str, stop: threading.Event, acknowledged: dict[str, str]) -> None:
    """Bulks of 200 through the alias, back to back, until one is refused (the block) or `stop`; 6 at most."""
    for round_ in range(6):
        if stop.is_set():
            return
        body = []
        for i in range(200):
            body += [{"index": {"_index": alias, "_id": f"raw-{round_}-{i}"}},
                     {"paper_id": f"raw-{round_}-{i}", "title": f"raw {round_} {i}"}]
        items = [item["index"] for item in client.bulk(body=body)["items"]]
        acknowledged.update({item["_id"]: f"raw {round_} {item['_id'].rsplit('-', 1)[1]}" for item in items
                             if item.get("status") in (200, 201)})
        if any(item.get("status") not in (200, 201) for item in items):
            return


def with_fault(fault: str, alias: str, to_model: str, conn, client, rng: random.Random) -> tuple[float, object, dict]:
    """One migration meeting `fault`: (seconds, final state, what the fault's own check found)."""
    started = time.perf_counter()
    extra: dict = {"fault": fault}
    if fault == "crash-resume":
        step = rng.choice([s for s in migration.STEPS if s != "finished"])
        extra["step"] = step

        def crash(at: str) -> None:
            if at == step:
                raise Crash(at)
        try:
            migration.Migrator(alias, to_model, settings=conn, client=client, on_step=crash).run()
        except Crash:
            pass
        state = migration.load_state(client, alias)
        if state.status != "swapped":
            state = migration.Migrator(alias, to_model, settings=conn, client=client).run(resume=True)
    elif fault.startswith("paused"):
        before_swap = fault == "paused-before-swap-rollback"
        run = paused_run.start(conn, alias, to_model, "swap-ready" if before_swap else "page-copied", 1 if before_swap else 2,
                               lease_seconds=LEASE)
        try:
            state = (migration.rollback(client, alias) if before_swap
                     else migration.Migrator(alias, to_model, settings=conn, client=client).run(resume=True))
        finally:
            code, output = paused_run.wake(run)
        extra["woken_run"] = "stopped without acting" if code == 3 and "fenced off" in output else f"exit {code}: {output[-300:]}"
    else:
        acknowledged: dict[str, str] = {}
        stop = threading.Event()
        writer = threading.Thread(target=raw_writes, args=(client, alias, stop, acknowledged), daemon=True)
        if fault == "partial-update":
            client.index(index=alias, id="partial-target", body={"paper_id": "partial-target", "title": "before"}, refresh=True)

        def inject(at: str) -> None:
            if at != "caught-up":
                return
            if fault == "partial-update":
                client.update(index=alias, id="partial-target", body={"doc": {"title": "after"}})
                acknowledged["partial-target"] = "after"
            elif writer.ident is None:  # the first catch-up pass only
                writer.start()
        try:
            state = migration.Migrator(alias, to_model, settings=conn, client=client, on_step=inject).run()
        finally:
            stop.set()
            if writer.is_alive():
                writer.join(120)
        client.indices.refresh(index=alias)
        ids = list(acknowledged)
        docs = [d for i in range(0, len(ids), 500) for d in
                client.mget(index=alias, body={"ids": ids[i:i + 500]}, _source_includes=["title"])["docs"]]
        extra["raw_acknowledged"] = len(ids)
        extra["raw_lost"] = sum(not d.get("found") or d["_source"]["title"] != acknowledged[d["_id"]] for d in docs)
        if ids:  # out again, so the next migrations copy the writer's papers only
            client.bulk(body=[{"delete": {"_index": alias, "_id": i}} for i in ids], params={"refresh": "true"})
    return time.perf_counter() - started, state, extra


def lost_of(exc: AssertionError) -> dict:
    count = re.match(r"(\d+) acknowledged writes", str(exc))
    return {"lost": int(count.group(1)) if count else -1, "message": str(exc)[:1500]}


def check_live(history: History, client, alias: str) -> dict:
    """History.check while the writer runs, on a copy of the history; a failure counts only if no write
    started, finished or failed during the check (otherwise the copy may be stale: try again)."""
    for _ in range(10):
        before, attempted, failed = dict(history.expected), history.attempted, len(history.failed)
        try:
            return {**History(expected=before).check(client, alias), "lost": 0}
        except AssertionError as exc:
            if (history.attempted, len(history.failed)) == (attempted, failed) and history.expected == before:
                return lost_of(exc)
        time.sleep(0.13)
    return {"lost": None, "message": "inconclusive: a write overlapped every attempt"}


def timed_migration(alias: str, to_model: str, conn, client) -> tuple[float, migration.MigrationState]:
    migrator = migration.Migrator(alias, to_model, settings=conn, client=client)
    migrator.encoder  # load the target model before the clock starts
    started = time.perf_counter()
    state = migrator.run()
    return time.perf_counter() - started, state


def migration_model(name: str) -> str:
    from multi_modal_rag.models import canonical_name

    return canonical_name(name)


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=100)
    p.add_argument("--migrations", type=int, default=10)
    p.add_argument("--rate", type=float, default=5.0, help="writes per second (default 5)")
    p.add_argument("--to-model", default=None, help="alternate minilm <-> this (default: a rotated MiniLM)")
    p.add_argument("--quiet-too", action=argparse.BooleanOptionalAction, default=True,
                   help="also one migration of --docs papers with no traffic (default on)")
    p.add_argument("--faults", action="store_true", help=f"one fault per migration, in turn: {', '.join(FAULTS)}")
    p.add_argument("--mpnet", type=int, default=0, help="then N migrations alternating to mpnet and back (default 0)")
    args = p.parse_args()
    lease.LEASE_SECONDS, lease.HEARTBEAT_SECONDS = LEASE, LEASE / 6
    rng = random.Random(5)
    conn, client = settings(), make_client(settings())
    papers = load_papers(args.corpus, args.docs + POOL)
    initial, pool = papers[: args.docs], papers[args.docs:]
    tmp = tempfile.TemporaryDirectory(prefix="bench-live-")
    other = args.to_model or rotated_copy("minilm", Path(tmp.name) / "minilm-rotated")
    alias, quiet_alias = scratch_index("live"), scratch_index("quiet")
    runs, errors, final, quiet = [], [], {}, None
    try:
        OpenSearchManager(alias=alias, model="minilm", settings=conn).index_all(initial)
        traffic = LiveTraffic(conn, alias, pool=pool, initial=initial, rate=args.rate)
        started = time.perf_counter()
        with traffic:
            time.sleep(2)  # writes before the first migration
            plan = [other if i % 2 == 0 else "minilm" for i in range(args.migrations)]
            plan += ["mpnet" if i % 2 == 0 else "minilm" for i in range(args.mpnet)]
            for i, to_model in enumerate(plan):
                if store.spec_of(client, store.resolve_alias(client, alias)).model == migration_model(to_model):
                    to_model = "minilm" if to_model != "minilm" else other  # a rolled-back run left the model as it was
                extra: dict = {}
                try:
                    if args.faults:
                        seconds, state, extra = with_fault(FAULTS[i % len(FAULTS)], alias, to_model, conn, client, rng)
                    else:
                        seconds, state = timed_migration(alias, to_model, conn, client)
                    migration.cleanup(client, alias)
                except Exception:  # noqa: BLE001 -- reported, not fixed here
                    errors.append({"migration": i + 1, "to_model": to_model, "traceback": traceback.format_exc()})
                    print(errors[-1]["traceback"], file=sys.stderr)
                    break
                runs.append({"to_model": to_model, "target_index": state.target_index, "seconds": round(seconds, 2),
                             "handover_s": state.handover_seconds, "copied": state.copied, "caught_up": state.caught_up,
                             "deleted": state.deleted, "verified": state.verification.get("ok"),
                             "papers_per_s": round(state.copied / seconds, 2), "outcome": state.status, **extra,
                             "check": check_live(traffic.history, client, alias)})
                time.sleep(2)  # writes after the swap
        traffic_seconds = time.perf_counter() - started
        h = traffic.history
        try:
            final = {**h.check(client, alias), "lost": 0}
        except AssertionError as exc:
            final = lost_of(exc)
        if args.quiet_too:
            OpenSearchManager(alias=quiet_alias, model="minilm", settings=conn).index_all(initial)
            seconds, state = timed_migration(quiet_alias, other, conn, client)
            quiet = {"docs": state.copied, "to_model": other, "seconds": round(seconds, 2),
                     "handover_s": state.handover_seconds, "papers_per_s": round(state.copied / seconds, 2)}
    finally:
        for name in (alias, quiet_alias):
            drop(client, name)
            client.delete(index="mmrag-migrations", id=name, params={"ignore": 404})
        tmp.cleanup()

    handovers = [r["handover_s"] for r in runs if r["handover_s"] is not None]
    result = {
        "docs": args.docs, "rate_target": args.rate, "models": ["minilm", args.to_model or "minilm-rotated"],
        "migrations": {"attempted": min(args.migrations, len(runs) + len(errors)), "completed": len(runs), "requested": args.migrations},
        "writes": {"attempted": h.attempted, "acknowledged": h.acknowledged, "checked": final.get("checked"),
                   "lost": final["lost"], "lost_detail": final.get("message"),
                   "unacknowledged": len(h.failed), "unacknowledged_examples": h.failed[:5],
                   "longest_write_s": round(h.longest_write, 3),
                   "achieved_rate_per_s": round(h.acknowledged / traffic_seconds, 2)},
        "reads": {"attempted": traffic.reads, "failed": traffic.read_failures, "examples": traffic.read_errors[:3]},
        "traffic_seconds": round(traffic_seconds, 1),
        "handover_s": {"median": median(handovers), "max": max(handovers)} if handovers else None,
        "migration_s_median": median([r["seconds"] for r in runs]) if runs else None,
        "papers_per_s_median": median([r["papers_per_s"] for r in runs]) if runs else None,
        "runs": runs, "quiet": quiet, "errors": errors,
    }

    def table(r):
        w, m = r["writes"], r["migrations"]
        print(f"{r['docs']} papers, {r['models'][0]} <-> {r['models'][1]}, writer at {r['rate_target']}/s for {r['traffic_seconds']}s")
        print(f"  migrations  {m['completed']}/{m['attempted']} completed ({m['requested']} requested)")
        print(f"  {'#':>2s} {'to':16s} {'fault':28s} {'outcome':11s} {'seconds':>8s} {'handover':>9s} {'copied':>7s} "
              f"{'caught_up':>9s} {'deleted':>7s}  check")
        for i, run in enumerate(r["runs"], 1):
            c = run["check"]
            verdict = f"ok ({c['checked']} checked)" if c["lost"] == 0 else c.get("message", "")[:120]
            fault = run.get("fault", "none") + (f" @{run['step']}" if "step" in run else "")
            more = "".join(f"; {k} {run[k]}" for k in ("woken_run", "raw_acknowledged", "raw_lost") if k in run)
            handover = f"{run['handover_s']:8.3f}s" if run["handover_s"] is not None else f"{'-':>9s}"
            print(f"  {i:2d} {Path(run['to_model']).name[:16]:16s} {fault[:28]:28s} {run['outcome']:11s} {run['seconds']:8.2f} "
                  f"{handover} {run['copied']:7d} {run['caught_up']:9d} {run['deleted']:7d}  {verdict}{more}")
        print(f"  writes      {w['attempted']} attempted, {w['acknowledged']} acknowledged, {w['checked']} ids checked, {w['lost']} lost")
        if w["lost_detail"]:
            print(f"              {w['lost_detail']}")
        print(f"  unacked     {w['unacknowledged']}" + (f": {w['unacknowledged_examples']}" if w["unacknowledged"] else ""))
        print(f"  reads       {r['reads']['attempted']} attempted, {r['reads']['failed']} failed" + (f": {r['reads']['examples']}" if r["reads"]["failed"] else ""))
        print(f"  write pause longest write {w['longest_write_s']:.3f}s; achieved {w['achieved_rate_per_s']:.2f} acknowledged writes/s")
        if r["handover_s"]:
            print(f"  handover    median {r['handover_s']['median']:.3f}s, max {r['handover_s']['max']:.3f}s")
            print(f"  migration   median {r['migration_s_median']:.2f}s, {r['papers_per_s_median']:.2f} papers/s")
        if r["quiet"]:
            q = r["quiet"]
            print(f"  quiet index {q['docs']} papers -> {Path(q['to_model']).name}: {q['seconds']:.2f}s ({q['papers_per_s']:.2f} papers/s), handover {q['handover_s']:.3f}s")
        for e in r["errors"]:
            print(f"  ERROR in migration {e['migration']} -> {e['to_model']}:\n{e['traceback']}")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
