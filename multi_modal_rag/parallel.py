"""Work spread over worker processes, local ones or the workers of a Ray cluster: indexing units here, and the
migration's copy (point-in-time slices, `migration.slices`) through the same `run_units`.

The input is cut into `units` independent parts by paper id (a hash of it), so a paper and its duplicates
always land in the same part and are told apart there as in a single run. Each unit is an ordinary
`index_all` with `pending`, so the index itself is the checkpoint: a unit run twice (its worker was lost
and the executor ran it again) writes nothing new, and the papers are the same as a one-process run.
Records that cannot be read have no id and are reported by the unit their position falls to, once.

Ray is an existing engine for this (task retries, placement on GPUs, a dashboard); without it the units
run in a local process pool. Each worker loads the model once and uses `cores / workers` threads.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Literal, Sequence, TypeVar

from .connection import ConnectionSettings
from .documents import Paper, RecordError, read_papers
from .errors import MMRagError
from .results import IndexSummary

logger = logging.getLogger(__name__)

Executor = Literal["local", "ray"]
T = TypeVar("T")


@dataclass(frozen=True)
class IndexUnit:
    """Part `part` of `parts` of the papers in `paths`, written through `alias` with `model`."""

    paths: tuple[str, ...]
    part: int
    parts: int
    alias: str
    model: str
    settings: ConnectionSettings
    options: dict[str, Any] = field(default_factory=dict)  # OpenSearchManager keywords: precision, device, ...

    def records(self) -> Iterator[Paper | RecordError]:
        """This unit's records, in input order."""
        readers = itertools.chain.from_iterable(read_papers(path) for path in self.paths)
        for position, item in enumerate(readers):
            owner = position if isinstance(item, RecordError) else _bucket(item.doc_id())
            if owner % self.parts == self.part:
                yield item


def _bucket(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big")


def run_unit(unit: IndexUnit, threads: int | None = None) -> IndexSummary:
    """Index one unit, in whatever process runs it."""
    from .manager import OpenSearchManager

    if threads:
        import torch

        torch.set_num_threads(threads)
    manager = OpenSearchManager(alias=unit.alias, model=unit.model, settings=unit.settings, **unit.options)
    try:
        return manager.index_all(unit.records(), pending=True, refresh=False)
    finally:
        manager.close()


def units_for(paths: Sequence[str], parts: int, *, alias: str, model: str, settings: ConnectionSettings,
              options: dict[str, Any] | None = None) -> list[IndexUnit]:
    if parts < 1:
        raise MMRagError(f"--workers {parts}: must be 1 or more")
    return [IndexUnit(tuple(str(p) for p in paths), part, parts, alias, model, settings, dict(options or {}))
            for part in range(parts)]


def index_in_parallel(units: Sequence[IndexUnit], *, executor: Executor = "local", ray_address: str | None = None,
                      retries: int = 1) -> IndexSummary:
    """Run the indexing units with `executor`; one summary of them all."""
    gpu = any(unit.options.get("device") == "cuda" for unit in units)
    return merge_summaries(run_units(run_unit, units, executor=executor, ray_address=ray_address, retries=retries, gpu=gpu))


def run_units(fn: Callable[[Any, int], T], units: Sequence[Any], *, executor: Executor = "local",
              ray_address: str | None = None, retries: int = 1, gpu: bool = False) -> list[T]:
    """`fn(unit, threads)` for every unit, each in a worker process; results in the units' order. A unit whose
    worker died is run again, up to `retries` times (`fn` must make that harmless). `threads`: the torch threads
    each worker may use, the cores shared out. `gpu`: each Ray task asks for a GPU of its own (local workers
    share this machine's, `device` choosing)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, len(units)))
    if executor == "ray":
        return _run_ray(fn, units, ray_address, retries, threads, gpu)
    return _run_local(fn, units, retries, threads)


def _run_local(fn: Callable[[Any, int], T], units: Sequence[Any], retries: int, threads: int) -> list[T]:
    results: dict[int, T] = {}
    todo = list(range(len(units)))
    for attempt in range(retries + 1):
        with ProcessPoolExecutor(max_workers=len(todo), mp_context=get_context("spawn")) as pool:
            futures = {i: pool.submit(fn, units[i], threads) for i in todo}
            lost = []
            for i in todo:
                try:
                    results[i] = futures[i].result()
                except BrokenProcessPool:
                    lost.append(i)
        if not lost:
            break
        logger.warning("%d unit(s) lost their worker; running them again (attempt %d)", len(lost), attempt + 2)
        todo = lost
    else:
        raise MMRagError(f"{len(todo)} unit(s) failed {retries + 1} times: their workers died")
    return [results[i] for i in range(len(units))]


def _run_ray(fn: Callable[[Any, int], T], units: Sequence[Any], address: str | None, retries: int, threads: int,
             gpu: bool) -> list[T]:
    try:
        import ray
    except ImportError:
        raise MMRagError("--executor ray needs Ray: pip install 'multi-modal-rag[ray]' (or use --executor local)") from None
    if not ray.is_initialized():
        # a local Ray starts with one CPU a unit; an address joins an existing cluster
        ray.init(address=address, num_cpus=None if address else len(units), include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=retries)(fn)
    return ray.get([task.remote(unit, threads) for unit in units])


def merge_summaries(results: Sequence[IndexSummary]) -> IndexSummary:
    """One summary of the units' summaries (seconds: the longest unit)."""
    total = IndexSummary()
    for unit in results:
        for name in ("created", "updated", "skipped", "failed", "chunks"):
            setattr(total, name, getattr(total, name) + getattr(unit, name))
        total.failures.extend(unit.failures)
        total.seconds = max(total.seconds, unit.seconds)
    return total


__all__ = ["Executor", "IndexUnit", "index_in_parallel", "merge_summaries", "run_unit", "run_units", "units_for"]
