"""The write pause of a migration's hand-over on large indexes, under a steady writer.

    python benchmarks/bench_handover.py [--sizes 5000,50000] [--rate 5] [--model tiny] [--json] [--save FILE]   (uses $OPENSEARCH_URL)

For each size, index that many papers (SciFact abstracts, repeated with numbered titles past its 5,183) with
--model (default `tiny`: a one-layer 32-dimension BERT with random weights and MiniLM's tokenizer, since the pause
does not depend on the model), start a writer (--rate writes a second) and a reader through the alias, migrate to
a rotated copy of the model, and report the hand-over (writes blocked, from the state) and the longest write the
writer saw, beside what the hand-over cost before `prepare`/`settle`: the whole merge of both indexes' ids and
content hashes with every old paper chunked for the expected chunk count, timed here on the same two indexes after
the swap (read only). Every acknowledged write is
checked afterwards. The tiny model ranks nothing, so with it the canary queries (which run before the block and
take no part in the pause) are switched off; every other check runs.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

from _common import drop, emit, load_papers, make_client, save, scratch_index, settings

from multi_modal_rag import OpenSearchManager, Paper, migration, store
from multi_modal_rag.devtools.rotated_model import rotated_copy, tiny_copy
from multi_modal_rag.devtools.traffic import LiveTraffic
from multi_modal_rag.encoders import Encoder
from multi_modal_rag.migration.sync import diff

POOL = 500


def corpus(base: list[Paper], n: int) -> list[Paper]:
    def numbered(i: int, paper: Paper) -> Paper:
        return paper if i < len(base) else Paper(**{**paper.__dict__, "id": f"{paper.doc_id()}-{i}",
                                                     "title": f"{paper.title} ({i // len(base)})"})
    return [numbered(i, p) for i, p in zip(range(n), itertools.cycle(base))]


def one_size(n: int, model: str, other: str, rate: float, base: list[Paper], conn, client) -> dict:
    papers = corpus(base, n + POOL)
    initial, pool = papers[:n], papers[n:]
    alias = scratch_index(f"handover{n}")
    try:
        started = time.perf_counter()
        summary = OpenSearchManager(alias=alias, model=model, settings=conn).index_all(initial)
        indexed_s = time.perf_counter() - started
        traffic = LiveTraffic(conn, alias, pool=pool, initial=initial, rate=rate)
        with traffic:
            time.sleep(2)
            started = time.perf_counter()
            state = migration.Migrator(alias, other, settings=conn, client=client).run()
            migration_s = time.perf_counter() - started
            time.sleep(2)
        checked = traffic.history.check(client, alias)
        spec = store.spec_of(client, state.target_index)
        with Encoder(spec.model) as encoder:  # what the hand-over used to do under the block: the whole merge
            started = time.perf_counter()
            chunks = sum(len(encoder.chunk(Paper.from_source(doc), spec)) for doc in
                         (d for page in store.scan_sources(client, state.source_index, page_size=1000) for d in page))
            differences = sum(1 for _ in diff(client, state.source_index, state.target_index))
            whole_merge_s = time.perf_counter() - started
        return {"papers": n, "indexed": summary.created, "index_s": round(indexed_s, 1),
                "migration_s": round(migration_s, 1), "handover_s": state.handover_seconds,
                "longest_write_s": round(traffic.history.longest_write, 3), "whole_merge_s": round(whole_merge_s, 3),
                "writes_acknowledged": traffic.history.acknowledged, "writes_unacknowledged": len(traffic.history.failed),
                "checked": checked["checked"], "lost": 0, "reads": traffic.reads, "read_failures": traffic.read_failures,
                "caught_up": state.caught_up, "deleted": state.deleted, "chunks": chunks,
                "differences_after": differences}
    finally:
        drop(client, alias)
        client.delete(index="mmrag-migrations", id=alias, params={"ignore": 404})


def main() -> None:
    from _common import parser

    p = parser(__doc__.splitlines()[0], docs=0)
    p.set_defaults(model="tiny")
    p.add_argument("--sizes", default="5000,50000", help="index sizes, comma-separated (default 5000,50000)")
    p.add_argument("--rate", type=float, default=5.0, help="writes per second during each migration (default 5)")
    args = p.parse_args()
    conn, client = settings(), make_client(settings())
    base = load_papers(args.corpus, 10_000)
    if args.model == "tiny":
        import importlib

        from multi_modal_rag.migration.canaries import CanaryResult

        checks = importlib.import_module("multi_modal_rag.migration.verify")  # (the package exports a `verify` function)
        checks._canaries = lambda *_: CanaryResult(notes=["switched off: a random model"])
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as tmp:
        model = tiny_copy("minilm", Path(tmp) / "tiny") if args.model == "tiny" else args.model
        other = rotated_copy(model, Path(tmp) / "rotated")
        runs = [one_size(int(n), model, other, args.rate, base, conn, client) for n in args.sizes.split(",")]
    result = {"model": args.model, "rate": args.rate, "runs": runs}

    def table(r):
        print(f"hand-over under a writer at {r['rate']}/s, model {r['model']} -> its rotated copy")
        print(f"  {'papers':>7s} {'handover':>9s} {'longest write':>14s} {'whole merge (before)':>21s} {'migration':>10s} "
              f"{'acked':>6s} {'lost':>5s} {'read fails':>10s}")
        for run in r["runs"]:
            print(f"  {run['papers']:7d} {run['handover_s']:8.3f}s {run['longest_write_s']:13.3f}s {run['whole_merge_s']:20.3f}s "
                  f"{run['migration_s']:9.1f}s {run['writes_acknowledged']:6d} {run['lost']:5d} {run['read_failures']:10d}")

    save(result, args.save)
    emit(result, args.json, table)


if __name__ == "__main__":
    main()
