"""Repeated model migrations of a live index: lost writes, failed reads, the write pause, and the time each takes.

    python benchmarks/bench_live_migration.py [--docs N] [--migrations 10] [--rate 5] [--to-model NAME] [--json]   (uses $OPENSEARCH_URL)

Index --docs papers with minilm behind a scratch alias, start one writer (inserts, updates, deletes at
--rate per second) and one reader through the alias, and migrate it --migrations times, alternating
minilm <-> --to-model (default: a rotated copy of MiniLM, a change of model at the same dimension),
cleaning up the old index after each swap. Every acknowledged write is checked after each migration
and once more after the traffic stops. With --quiet-too (default) one more migration of --docs papers
runs on an index with no traffic.
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

from multi_modal_rag import OpenSearchManager, migration
from multi_modal_rag.devtools.rotated_model import rotated_copy
from multi_modal_rag.devtools.traffic import History, LiveTraffic

POOL = 1000  # papers the writer may insert; once used up, inserts become updates


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


def main() -> None:
    p = parser(__doc__.splitlines()[0], docs=100)
    p.add_argument("--migrations", type=int, default=10)
    p.add_argument("--rate", type=float, default=5.0, help="writes per second (default 5)")
    p.add_argument("--to-model", default=None, help="alternate minilm <-> this (default: a rotated MiniLM)")
    p.add_argument("--quiet-too", action=argparse.BooleanOptionalAction, default=True,
                   help="also one migration of --docs papers with no traffic (default on)")
    args = p.parse_args()
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
            for i in range(args.migrations):
                to_model = other if i % 2 == 0 else "minilm"
                try:
                    seconds, state = timed_migration(alias, to_model, conn, client)
                    migration.cleanup(client, alias)
                except Exception:  # noqa: BLE001 -- reported, not fixed here
                    errors.append({"migration": i + 1, "to_model": to_model, "traceback": traceback.format_exc()})
                    print(errors[-1]["traceback"], file=sys.stderr)
                    break
                runs.append({"to_model": to_model, "target_index": state.target_index, "seconds": round(seconds, 2),
                             "handover_s": state.handover_seconds, "copied": state.copied, "caught_up": state.caught_up,
                             "deleted": state.deleted, "verified": state.verification.get("ok"),
                             "papers_per_s": round(state.copied / seconds, 2),
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

    handovers = [r["handover_s"] for r in runs]
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
        "handover_s": {"median": median(handovers), "max": max(handovers)} if runs else None,
        "migration_s_median": median([r["seconds"] for r in runs]) if runs else None,
        "papers_per_s_median": median([r["papers_per_s"] for r in runs]) if runs else None,
        "runs": runs, "quiet": quiet, "errors": errors,
    }

    def table(r):
        w, m = r["writes"], r["migrations"]
        print(f"{r['docs']} papers, {r['models'][0]} <-> {r['models'][1]}, writer at {r['rate_target']}/s for {r['traffic_seconds']}s")
        print(f"  migrations  {m['completed']}/{m['attempted']} completed ({m['requested']} requested)")
        print(f"  {'#':>2s} {'to':16s} {'seconds':>8s} {'handover':>9s} {'copied':>7s} {'caught_up':>9s} {'deleted':>7s} {'papers/s':>8s}  check")
        for i, run in enumerate(r["runs"], 1):
            c = run["check"]
            verdict = f"ok ({c['checked']} checked)" if c["lost"] == 0 else c.get("message", "")[:120]
            print(f"  {i:2d} {Path(run['to_model']).name[:16]:16s} {run['seconds']:8.2f} {run['handover_s']:8.3f}s {run['copied']:7d} "
                  f"{run['caught_up']:9d} {run['deleted']:7d} {run['papers_per_s']:8.2f}  {verdict}")
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
