"""Live traffic through an alias, for tests and benchmarks of migrations: a writer that keeps a history of
its acknowledged writes, a reader that counts failed searches, and the history check.

The guarantee it checks: every write acknowledged through the alias is afterwards in the index the alias
points at, in its latest version, with vectors of that index's model; every acknowledged delete stays deleted.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

from .. import store
from ..connection import ConnectionSettings
from ..documents import Paper
from ..manager import OpenSearchManager


@dataclass
class History:
    """Acknowledged writes, in the order the (single) writer made them: id -> content hash, None once deleted."""

    expected: dict[str, str | None] = field(default_factory=dict)
    attempted: int = 0
    acknowledged: int = 0
    failed: list[str] = field(default_factory=list)
    longest_write: float = 0.0

    def check(self, client, alias: str) -> dict[str, int]:
        """Every acknowledged write present in its latest version in the alias's index, every delete absent."""
        index = store.resolve_alias(client, alias)
        spec = store.spec_of(client, index)
        client.indices.refresh(index=index)
        ids = [doc_id for doc_id in self.expected]
        found = {}
        for start in range(0, len(ids), 500):
            response = client.mget(index=index, body={"ids": ids[start:start + 500]},
                                   _source_includes=["content_hash", "model", "embedding"])
            found.update({d["_id"]: d["_source"] for d in response["docs"] if d.get("found")})
        problems = []
        for doc_id, digest in self.expected.items():
            if digest is None and doc_id in found:
                problems.append(f"{doc_id}: deleted, but present")
            elif digest is not None and doc_id not in found:
                problems.append(f"{doc_id}: written, but missing")
            elif digest is not None and found[doc_id]["content_hash"] != digest:
                problems.append(f"{doc_id}: an older version")
            elif digest is not None and (found[doc_id]["model"] != spec.model or len(found[doc_id]["embedding"]) != spec.dimension):
                problems.append(f"{doc_id}: vectors of {found[doc_id]['model']}, index is {spec.model}")
        if problems:
            raise AssertionError(f"{len(problems)} acknowledged writes not kept: {problems[:10]}")
        return {"checked": len(self.expected), "present": sum(d is not None for d in self.expected.values())}


class LiveTraffic:
    """A writer (inserts, updates, deletes at ~`rate` per second) and a reader, both through the alias."""

    def __init__(self, settings: ConnectionSettings, alias: str, pool: list[Paper], initial: list[Paper], rate: float = 6.0):
        self.writer = OpenSearchManager(alias=alias, settings=settings, batch_size=8)  # follows the index's model
        self.reader = OpenSearchManager(alias=alias, settings=settings)
        self.pool, self.rate = list(pool), rate
        self.live = {p.doc_id(): p for p in initial}
        self.history = History(expected={p.doc_id(): p.content_hash() for p in initial})
        self.reads = self.read_failures = 0
        self.read_errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write_loop, daemon=True), threading.Thread(target=self._read_loop, daemon=True)]

    def __enter__(self) -> "LiveTraffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _write_loop(self) -> None:
        rng = random.Random(11)
        version = itertools.count()
        while not self.stop.is_set():
            op = rng.choice(["insert", "update", "update", "delete"]) if self.live else "insert"
            started = time.monotonic()
            self.history.attempted += 1
            try:
                if op == "insert" and self.pool:
                    paper = self.pool.pop()
                elif op in ("update", "insert"):
                    old = self.live[rng.choice(sorted(self.live))]
                    paper = Paper(**{**old.__dict__, "abstract": f"{old.abstract} Revision {next(version)}."})
                else:
                    doc_id = rng.choice(sorted(self.live))
                    self.writer.delete([doc_id])  # raises if not acknowledged
                    self.pool.insert(0, self.live.pop(doc_id))  # inserted again later: a delete, then a new write
                    self.history.expected[doc_id] = None
                    self.history.acknowledged += 1
                    continue
                summary = self.writer.index_all([paper], refresh=False)
                if summary.failed:
                    self.history.failed.append(f"{paper.doc_id()}: {summary.failures[0].reason}")
                    continue
                self.live[paper.doc_id()] = paper
                self.history.expected[paper.doc_id()] = paper.content_hash()
                self.history.acknowledged += 1
            except Exception as exc:  # counted: an unacknowledged write is allowed, a lost one is not
                self.history.failed.append(f"{op}: {exc}")
            finally:
                self.history.longest_write = max(self.history.longest_write, time.monotonic() - started)
            self.stop.wait(max(0.0, started + 1.0 / self.rate - time.monotonic()))  # paced: `rate` writes a second at most

    def _read_loop(self) -> None:
        queries = itertools.cycle(["vitamin deficiency", "protein folding", "cancer cells", "gene expression"])
        while not self.stop.is_set():
            self.reads += 1
            try:
                self.reader.search(next(queries), mode="hybrid", size=5)
            except Exception as exc:  # counted: the guarantee is that there are none
                self.read_failures += 1
                self.read_errors.append(str(exc)[:200])
            self.stop.wait(0.1)
