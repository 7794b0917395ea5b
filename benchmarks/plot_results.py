"""Draw benchmarks/results/benchmarks.png from the JSON the benchmark scripts saved with --save.

    python benchmarks/plot_results.py [--results benchmarks/results]

Reads indexing.json, query.json, migration.json and live_migration.json (any that exist) and draws one panel each.
Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def indexing_panel(ax, r: dict) -> None:
    systems = {k: v for k, v in r["systems"].items() if "docs_per_s" in v}
    names = list(systems)
    rates = [systems[n]["docs_per_s"] for n in names]
    bars = ax.barh(names, rates, color=["tab:green" if n == "ours" else "tab:gray" if n == "bare_encode" else "tab:blue" for n in names])
    for bar, n in zip(bars, names):
        ratio = systems[n].get("ratio_to_bare_encode")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {systems[n]['docs_per_s']:.2f}"
                + (f" ({ratio:.2f}x encode)" if ratio else ""), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(rates) * 1.45)
    ax.set_xlabel("papers per second (higher is better)")
    ax.set_title(f"Indexing {r['docs']} papers ({r['texts_embedded']} chunks), {r['model']}", fontsize=10)


def query_panel(ax, r: dict) -> None:
    modes = list(r["modes"])
    p50 = [r["modes"][m]["p50_ms"] for m in modes]
    p95 = [r["modes"][m]["p95_ms"] for m in modes]
    x = range(len(modes))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="tab:green")
    ax.bar([i + 0.2 for i in x], p95, width=0.4, label="p95", color="tab:olive")
    ax.set_xticks(list(x), modes)
    ax.set_ylabel("ms per query, embedding included")
    ax.legend(fontsize=8)
    ax.set_title(f"Query latency, {r['queries']} queries over {r['docs']} papers", fontsize=10)


def migration_panel(ax, r: dict) -> None:
    names = list(r["systems"])
    rates = [r["systems"][n]["docs_per_s"] for n in names]
    bars = ax.bar(names, rates, color=["tab:green", "tab:gray"][: len(names)])
    for bar, rate in zip(bars, rates):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{rate:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(rates) * 1.15)
    ax.set_ylabel("papers per second")
    ax.set_title(f"Migration {r['from_model']} -> {r['to_model']}, {r['docs']} papers", fontsize=10)
    if r.get("peak_rss_growth") is not None:
        sizes = sorted(r["memory"], key=int)
        ax.set_xlabel(f"peak RSS ({r.get('memory_model', r['to_model'])} re-embed): " + ", ".join(
            f"{r['memory'][n]['peak_rss_mb']:.0f} MB at {n} papers" for n in sizes) + f" ({r['peak_rss_growth'] * 100:+.1f}%)", fontsize=8)


def live_migration_panel(ax, r: dict) -> None:
    runs = r["runs"]
    x = range(1, len(runs) + 1)
    ax.bar([i - 0.2 for i in x], [run["seconds"] for run in runs], width=0.4, label="migration", color="tab:green")
    ax.bar([i + 0.2 for i in x], [run["handover_s"] for run in runs], width=0.4, label="handover (writes blocked)", color="tab:red")
    if r.get("quiet"):
        ax.axhline(r["quiet"]["seconds"], color="tab:gray", linestyle="--", linewidth=1, label="quiet index migration")
    ax.set_xticks(list(x))
    ax.set_xlabel(f"migration ({r['models'][0]} <-> {r['models'][1]}); {r['writes']['acknowledged']} acknowledged writes, "
                  f"{r['writes']['lost']} lost; {r['reads']['attempted']} reads, {r['reads']['failed']} failed", fontsize=8)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.set_title(f"Live migrations of {r['docs']} papers, writer at {r['writes']['achieved_rate_per_s']:.1f} writes/s", fontsize=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="folder with the saved JSON (default benchmarks/results)")
    args = p.parse_args()
    folder = Path(args.results)
    draws = (("indexing", indexing_panel), ("query", query_panel), ("migration", migration_panel),
             ("live_migration", live_migration_panel))
    panels = [(name, draw) for name, draw in draws if (folder / f"{name}.json").is_file()]
    if not panels:
        raise SystemExit(f"no indexing.json, query.json, migration.json or live_migration.json in {folder}: run the benchmarks with --save first")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (name, draw) in zip(axes[:, 0], panels):
        draw(ax, json.loads((folder / f"{name}.json").read_text(encoding="utf-8")))
    fig.tight_layout()
    out = folder / "benchmarks.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
