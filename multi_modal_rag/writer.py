"""The write side: embed and bulk-index papers through the alias, delete them, report the index's status.

Indexing is a generator core (`index_documents` yields one `IndexResult` per input record) with a
thin consumer (`index_all`), in the manner of opensearch-py's `streaming_bulk`. Embedding of the
next batch overlaps the bulk request of the previous one, through a bounded queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from opensearchpy.exceptions import NotFoundError, TransportError

from . import store
from .binding import AliasBinding
from .documents import Paper, RecordError, iter_unique
from .encoders import embed_papers
from .errors import ConnectionFailedError, IndexNotFoundError, MMRagError, OpenSearchRequestError
from .results import IndexResult, IndexStatus, IndexSummary

logger = logging.getLogger(__name__)

_DONE = object()
_REBINDS = 3  # embeddings redone for a new index in a row before the papers fail: the alias moving that often is no migration


class IndexWriter:
    """Write papers through an alias with bounded memory, retries of rejected items and per-paper results."""

    def __init__(
        self,
        binding: AliasBinding,
        *,
        batch_size: int = 256,  # papers a model call embeds: long enough for its length-sorting to cut padding
        bulk_docs: int = 200,
        bulk_bytes: int = 10 * 1024 * 1024,  # Amazon OpenSearch Service refuses bodies over 10 MiB
        max_retries: int = 5,
        initial_backoff: float = 1.0,
        block_wait: float = 60.0,
    ):
        self.binding = binding
        self.block_wait = block_wait  # how long a write waits through a write block (a migration hands over in ~1 s)
        self.batch_size = batch_size
        self.bulk_docs = bulk_docs
        self.bulk_bytes = bulk_bytes
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff

    @property
    def alias(self) -> str:
        return self.binding.alias

    def index_documents(self, papers: Iterable[Paper | RecordError], *, pending: bool = False) -> Iterator[IndexResult]:
        """Embed and bulk-index papers, yielding one IndexResult per input record.

        Papers go to the concrete index behind the alias whose model embedded them. When that index is
        write-blocked (a migration's hand-over), they wait, then go to the index the alias points at
        by then, re-embedded with its model. With `pending`, papers already indexed with this model
        and the same content are skipped.
        """
        self.binding.ensure_index()
        flight = _Flight()
        current = self._start_round()
        try:
            for batch in _batches(iter_unique(papers), self.batch_size):
                good = [item for item in batch if isinstance(item, Paper)]
                for item in batch:
                    if isinstance(item, RecordError):
                        yield IndexResult(item.doc_id, "failed", item.origin, item.reason)
                if pending and good:
                    try:
                        unchanged = self._unchanged_ids(good, self.binding.index_spec.model)
                    except TransportError as exc:
                        for paper in good:
                            yield IndexResult(paper.doc_id(), "failed", paper.origin, f"pending check failed: {store.describe(exc)}")
                        continue
                    for paper in good:
                        if paper.doc_id() in unchanged:
                            yield IndexResult(paper.doc_id(), "skipped", paper.origin, "unchanged")
                    good = [p for p in good if p.doc_id() not in unchanged]
                yield from self._send(good, current, flight)
                yield from flight.drain(current, block=False)
                if not self.overlap:
                    yield from flight.wait_answered(current)
                if flight.blocked:
                    yield from self._resend_blocked(current, flight)
            yield from current.finish(flight)
            while flight.blocked:  # refused by a write block after the last batch went out
                current = self._start_round()
                yield from self._resend_blocked(current, flight)
                yield from current.finish(flight)
        finally:
            current.close()

    def _start_round(self) -> "_Round":
        """A bulk writer thread fed through a bounded queue, so embedding overlaps writing."""
        round_ = _Round()
        round_.thread = threading.Thread(target=self._bulk_writer, args=(round_.actions, round_.results), daemon=True,
                                         name="mmrag-bulk")
        round_.thread.start()
        return round_

    def _send(self, papers: list[Paper], round_: "_Round", flight: "_Flight") -> Iterator[IndexResult]:
        """Embed papers for the bound index and queue them for it; a model failure fails them, reported per paper.

        An embedding takes long enough for a migration to swap the alias and `cleanup` to delete the index meanwhile,
        so the alias is resolved again after it: if it moved, the papers are embedded again for the new index.
        """
        if not papers:
            return
        for _ in range(_REBINDS):
            index, spec = self.binding.index, self.binding.index_spec
            try:
                docs = embed_papers(self.binding.encoder, papers, spec)
            except Exception as exc:
                yield from _fail(papers, f"embedding failed: {_first_line(exc)}")
                return
            try:
                if self.binding.resolve() == index:
                    break
                self.binding.rebind()
            except MMRagError as exc:
                yield from _fail(papers, str(exc))
                return
            logger.info("alias %s moved from %s to %s while %d papers were embedded; embedding them again", self.alias,
                        index, self.binding.index, len(papers))
        else:
            yield from _fail(papers, f"the alias {self.alias!r} moved {_REBINDS} times while these papers were embedded")
            return
        if index is None:
            yield from _fail(papers, f"no index behind {self.alias!r} any more")
            return
        for paper, doc in zip(papers, docs):
            flight.papers[paper.doc_id()] = paper
            flight.chunks[paper.doc_id()] = len(doc["chunks"])
        round_.actions.put([{"_index": index, "_id": doc["paper_id"], "_source": doc} for doc in docs])

    def _resend_blocked(self, round_: "_Round", flight: "_Flight") -> Iterator[IndexResult]:
        """Wait until the bound index takes writes again or the alias moved, then send the blocked papers there."""
        papers = [flight.papers.pop(doc_id) for doc_id in flight.blocked]
        flight.blocked.clear()
        try:
            waited = self.wait_for_writable(since=flight.blocked_since)
        except MMRagError as exc:
            yield from _fail(papers, str(exc))
            return
        logger.info("%d papers waited %.2f s for a write block on %s", len(papers), waited, self.alias)
        yield from self._send(papers, round_, flight)

    def wait_for_writable(self, since: float | None = None) -> float:
        """Block until the bound index accepts writes or the alias points elsewhere (then rebind); seconds waited.

        `since` (a `time.monotonic()`) is when the papers waiting were first refused: however often they are refused
        again, they never wait longer than `block_wait` from then. Raises IndexMismatchError if the new index is of
        another model than this writer's, and MMRagError if the block outlasts `block_wait`.
        """
        started = time.monotonic()
        self._wait_unblocked(self.binding.index, started if since is None else since)
        self.binding.rebind()
        return time.monotonic() - started

    def _wait_unblocked(self, index: str | None, since: float) -> None:
        client = self.binding.client
        with store.translated(self.binding.url, f"waiting for writes to {self.alias}"):
            while store.resolve_alias(client, self.alias) == index and store.write_blocked(client, index):
                if time.monotonic() - since > self.block_wait:
                    break
                time.sleep(0.05)
        if time.monotonic() - since > self.block_wait:
            raise MMRagError(
                f"index {index} behind {self.alias!r} has refused writes for over {self.block_wait:.0f} s "
                "(index.blocks.write): a migration's hand-over that did not finish? `mmrag migrate --resume` "
                "or `mmrag migrate rollback` ends it."
            )

    def index_all(
        self,
        papers: Iterable[Paper | RecordError],
        *,
        pending: bool = False,
        refresh: bool = True,
        on_result: Callable[[IndexResult, IndexSummary], None] | None = None,
    ) -> IndexSummary:
        """Index everything and return the summary (the simple consumer of index_documents).

        `on_result` sees each result with the summary so far, e.g. to drive a progress bar.
        """
        summary = IndexSummary()
        started = time.perf_counter()
        for result in self.index_documents(papers, pending=pending):
            summary.add(result)
            if on_result is not None:
                on_result(result, summary)
        if refresh:
            try:
                self.refresh()
            except ConnectionFailedError as exc:  # the per-paper results above already say what was lost
                logger.warning("%s", exc)
        summary.seconds = time.perf_counter() - started
        return summary

    def _unchanged_ids(self, papers: list[Paper], model: str) -> set[str]:
        ids = [p.doc_id() for p in papers]
        response = self.binding.client.mget(index=self.alias, body={"ids": ids}, _source_includes=["content_hash", "model"])
        stored = {d["_id"]: d["_source"] for d in response["docs"] if d.get("found")}
        return {
            p.doc_id()
            for p in papers
            if stored.get(p.doc_id(), {}).get("content_hash") == p.content_hash() and stored[p.doc_id()].get("model") == model
        }

    @property
    def overlap(self) -> bool:
        """Whether embedding the next batch overlaps the bulk request of the last one.

        It does when the model runs on a GPU or the node on another host. When both share this machine's CPU,
        the node's indexing work only takes cores from PyTorch's threads, and the two slow each other down
        more than waiting does (benchmarks/bench_indexing.py, 2 cores: 17.4 s for 200 SciFact papers waiting,
        18.2-19.2 s overlapping).
        """
        return self.binding.encoder.device != "cpu" or not self.binding.settings.loopback

    def _bulk_writer(self, actions: queue.Queue, results: queue.Queue) -> None:
        """Send each embedded batch as it comes (split by `bulk_docs`/`bulk_bytes`), answers to `results`."""
        batch: list[dict[str, Any]] = []
        answered: set[str] = set()
        try:
            while (batch := actions.get()) is not _DONE:
                answered.clear()
                for ok, item in store.streaming_bulk(self.binding.client, batch, chunk_size=self.bulk_docs,
                                                      max_chunk_bytes=self.bulk_bytes, max_retries=self.max_retries,
                                                      initial_backoff=self.initial_backoff):
                    results.put((ok, item))
                    answered.add(next(iter(item.values())).get("_id"))
                batch = []
        except Exception as exc:  # never leave the consumer waiting: report and drain what is left
            reason = store.describe(exc)
            logger.error("bulk writer stopped: %s", reason)
            results.put((False, {"index": {"_id": None, "error": reason}}))
            while batch is not _DONE:
                for leftover in batch:
                    if leftover["_id"] not in answered:
                        results.put((False, {"index": {"_id": leftover["_id"], "error": f"not sent: {reason}"}}))
                batch, answered = actions.get(), set()
        finally:
            results.put(_DONE)

    def refresh(self) -> None:
        """Make what was written searchable now."""
        with store.translated(self.binding.url, f"refreshing {self.alias}"):
            self.binding.client.indices.refresh(index=self.alias)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete papers by id; returns how many existed.

        Deletes go to the index the alias points at when they are sent, and follow it like index writes: through a
        migration's write block (waited for, up to `block_wait`), and after a swap (an id the index no longer had,
        or an index gone, while the alias has moved, is deleted again from the index it points at now). Raises
        OpenSearchRequestError for a paper refused otherwise (another block: a disk at the flood stage).
        """
        client, deleted, todo = self.binding.client, 0, list(ids)
        since, moves = None, 0
        with store.translated(self.binding.url, f"deleting from {self.alias}"):
            index = store.resolve_alias(client, self.alias)
            while todo:
                if index is None:
                    raise IndexNotFoundError(f"No index or alias named {self.alias!r} at {self.binding.url}.")
                blocked, missed, refused = [], [], []
                actions = [{"_op_type": "delete", "_index": index, "_id": doc_id} for doc_id in todo]
                for ok, item in store.streaming_bulk(client, actions, max_retries=self.max_retries,
                                                     initial_backoff=self.initial_backoff):
                    info = item["delete"]
                    if ok:
                        deleted += int(info.get("result") == "deleted")
                    elif store.is_migration_block(info.get("error")):
                        blocked.append(info["_id"])
                    elif info.get("status") == 404:  # not_found, or index_not_found_exception
                        missed.append(info["_id"])
                    else:
                        refused.append(f"{info.get('_id')}: {store.item_reason(info)}")
                if refused:
                    raise OpenSearchRequestError(f"OpenSearch at {self.binding.url} refused to delete {len(refused)} "
                                                 f"paper(s) from {index}: {refused[0]}")
                if blocked:
                    since = since if since is not None else time.monotonic()
                    self._wait_unblocked(index, since)
                now = store.resolve_alias(client, self.alias) if blocked or missed else index
                moved = now != index and moves < _REBINDS
                if moved:
                    moves += 1
                    logger.info("alias %s moved from %s to %s; deleting %d papers there", self.alias, index, now,
                                len(missed) + len(blocked))
                todo, index = blocked + (missed if moved else []), now
            client.indices.refresh(index=self.alias)
        return deleted

    def count(self) -> int:
        """Number of papers behind the alias."""
        with store.translated(self.binding.url, f"counting {self.alias}"):
            return int(self.binding.client.count(index=self.alias)["count"])

    def status(self) -> IndexStatus:
        """Alias, index, model, dimension, papers, chunks and store size."""
        self.binding.ping()
        index = self.binding.resolve()
        if index is None:
            raise IndexNotFoundError(f"No index or alias named {self.alias!r} at {self.binding.url}.")
        client = self.binding.client
        try:
            with store.translated(self.binding.url, f"reading the status of {index}"):
                spec = store.spec_of(client, index)
                documents, chunks = store.count_papers_and_chunks(client, index)
                size = store.store_size(client, index)
        except IndexNotFoundError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise IndexNotFoundError(f"Index {index!r} behind {self.alias!r} disappeared while reading its status.") from exc
            raise
        return IndexStatus(
            alias=self.alias, index=index,
            model=spec.model if spec else None, dimension=spec.dimension if spec else None,
            space_type=spec.space_type if spec else None, engine=spec.engine if spec else None,
            documents=documents, chunks=chunks, store_size_bytes=size,
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Round:
    """One bulk writer thread and its queues; `finish` ends it and collects every answer."""

    def __init__(self) -> None:
        self.actions: queue.Queue = queue.Queue(maxsize=4)  # bounded: memory stays flat on any corpus size
        self.results: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.ended = False  # the writer thread's last answer (`_DONE`) was read

    def finish(self, flight: "_Flight") -> Iterator[IndexResult]:
        self.close()
        while not self.ended:
            yield from flight.drain(self, block=True)
        for doc_id in [d for d in flight.papers if d not in flight.blocked]:
            paper = flight.papers.pop(doc_id)
            yield IndexResult(doc_id, "failed", paper.origin, "the bulk writer stopped before answering")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.actions.put(_DONE)


class _Flight:
    """Papers sent and not yet answered, and those refused by a write block (to send again)."""

    def __init__(self) -> None:
        self.papers: dict[str, Paper] = {}
        self.chunks: dict[str, int] = {}
        self.blocked: list[str] = []
        self.blocked_since: float | None = None  # when a write block first refused papers, since the last acknowledged one

    def drain(self, round_: "_Round", block: bool) -> Iterator[IndexResult]:
        """The answers waiting (`block`: one answer, waiting for it) of the round's writer thread."""
        while not round_.ended:
            try:
                answer = round_.results.get(timeout=0.2) if block else round_.results.get_nowait()
            except queue.Empty:
                if block and not round_.thread.is_alive() and round_.results.empty():
                    round_.ended = True  # the thread died without its last answer
                return
            if answer is _DONE:
                round_.ended = True
                return
            ok, item = answer
            info = next(iter(item.values()))
            doc_id = info.get("_id")
            if not ok and store.is_migration_block(info.get("error")) and doc_id in self.papers:
                self.blocked.append(doc_id)
                self.blocked_since = time.monotonic() if self.blocked_since is None else self.blocked_since
            else:
                self.blocked_since = None if ok else self.blocked_since
                paper = self.papers.pop(doc_id, None)
                origin, chunks = (paper.origin if paper else ""), self.chunks.pop(doc_id, 0)
                if ok:
                    yield IndexResult(doc_id, "created" if info.get("result") == "created" else "updated", origin, None, chunks)
                else:
                    yield IndexResult(doc_id, "failed", origin, store.item_reason(info))
            if block:
                return

    def wait_answered(self, round_: "_Round") -> Iterator[IndexResult]:
        """Results until every paper sent has its answer (or is waiting out a write block)."""
        while len(self.papers) > len(self.blocked) and not round_.ended:
            yield from self.drain(round_, block=True)


def _fail(papers: Iterable[Paper], reason: str) -> Iterator[IndexResult]:
    for paper in papers:
        yield IndexResult(paper.doc_id(), "failed", paper.origin, reason)
