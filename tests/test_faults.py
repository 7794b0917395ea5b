"""Faults against the real node with the real MiniLM model: zero documents lost in every case.

Bulk rejections (429) and slow responses come from a loopback HTTP proxy in front of the session
node; a lost node is a real one: a dedicated local node on port 9230, stopped in the middle of
indexing and of a migration, then started again.
"""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from opensearchpy import OpenSearch

from multi_modal_rag import devtools as local_node, migration
from multi_modal_rag.connection import ConnectionSettings, make_client
from multi_modal_rag.documents import Paper, read_papers
from multi_modal_rag.errors import ConnectionFailedError, MigrationError, MMRagError
from multi_modal_rag import OpenSearchManager
from multi_modal_rag.models import model_path

from conftest import DEDICATED_HEAP, DEDICATED_PORT  # the node these tests stop: `dedicated_url` in conftest.py
HANG_LIMIT = 240.0  # seconds: a run that takes longer than this is a hang

REJECTED = json.dumps({
    "error": {
        "root_cause": [{"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}],
        "type": "es_rejected_execution_exception",
        "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
                  "all_bytes=0, coordinating_operation_bytes=52428800, max_coordinating_and_primary_bytes=53687091]",
    },
    "status": 429,
}).encode()


# ---- a loopback proxy that can answer, delay, rewrite or drop requests -------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # decompressed


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json; charset=UTF-8"})


Forward = Callable[[Request], Reply]
Handler = Callable[[Request, Forward], "Reply | None"]  # None: close the connection without an answer

_NOT_FORWARDED = {"host", "content-length", "content-encoding", "accept-encoding", "connection", "transfer-encoding"}


class LoopbackProxy:
    """An HTTP proxy on 127.0.0.1 (a free port) in front of `upstream`; `handler` sees every request."""

    def __init__(self, upstream: str, handler: Handler | None = None):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.handler: Handler = handler or (lambda request, forward: forward(request))
        self.requests: Counter[str] = Counter()  # "METHOD /path" without the query string
        proxy = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if body and self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                proxy.requests[f"{self.command} {self.path.split('?')[0]}"] += 1
                reply = proxy.handler(request, proxy.forward)
                self.close_connection = True  # one request per connection: a "dead" proxy stays dead
                if reply is None:
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(reply.body)
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): fine
                        pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="loopback-proxy")

    def forward(self, request: Request) -> Reply:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _NOT_FORWARDED | {"content-length"}}
            return Reply(response.status, body, kept)
        finally:
            connection.close()

    def __enter__(self) -> "LoopbackProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _is_bulk(request: Request) -> bool:
    return request.method in ("POST", "PUT") and request.path.split("?")[0].endswith("/_bulk")


def _papers(sample_path: Path, n: int) -> list[Paper]:
    return list(itertools.islice((p for p in read_papers(sample_path) if isinstance(p, Paper)), n))


def _ids(client: OpenSearch, index: str) -> list[str]:
    client.indices.refresh(index=index)
    body = {"size": 10000, "_source": False, "sort": [{"paper_id": "asc"}]}
    return [h["_id"] for h in client.search(index=index, body=body)["hits"]["hits"]]


def _run_with_watchdog(target: Callable[[], None], limit: float = HANG_LIMIT) -> float:
    """Run `target` in a thread; fail (a hang) when it takes over `limit` seconds. Re-raises its exception."""
    error: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test thread
            error.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=wrapped, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still running after {limit:.0f}s: a hang"
    if error:
        raise error[0]
    return time.monotonic() - started


# ---- 1. bulk rejections --------------------------------------------------------------------------------


def test_whole_bulk_requests_rejected_with_429_are_retried(settings, index_name, client, sample_path):
    rejections = 3
    rejected = 0
    lock = threading.Lock()

    def reject_first_bulks(request: Request, forward: Forward) -> Reply:
        nonlocal rejected
        if _is_bulk(request):
            with lock:
                if rejected < rejections:
                    rejected += 1
                    return Reply(429, REJECTED)
        return forward(request)

    papers = _papers(sample_path, 30)
    with LoopbackProxy(settings.url, reject_first_bulks) as proxy:
        manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url=proxy.url),
                                    batch_size=10, bulk_docs=5, initial_backoff=0.1)
        summary = manager.index_all(papers)
    assert rejected == rejections
    assert proxy.requests["POST /_bulk"] == 6 + rejections  # 30 papers in chunks of 5, plus the retries
    assert (summary.created, summary.updated, summary.failed) == (30, 0, 0), summary.failures
    assert _ids(client, index_name) == sorted(p.doc_id() for p in papers)


class ItemRejections:
    """Proxy handler: answers chosen items of bulk requests with an item-level 429 (not forwarded), forwards the rest.

    `reject(request_number, position, doc_id)` picks them; every rejected id is recorded.
    """

    def __init__(self, reject: Callable[[int, int, str], bool]):
        self.reject = reject
        self.rejected: list[str] = []
        self.bulks = 0
        self.lock = threading.Lock()

    def __call__(self, request: Request, forward: Forward) -> Reply:
        if not _is_bulk(request):
            return forward(request)
        with self.lock:
            self.bulks += 1
            number = self.bulks
        lines = [line for line in request.body.decode("utf-8").split("\n") if line.strip()]
        ops: list[tuple[str, dict, list[str]]] = []
        while lines:
            action = json.loads(lines.pop(0))
            op = next(iter(action))
            ops.append((op, action[op], [json.dumps(action)] + ([lines.pop(0)] if op != "delete" else [])))
        rejected = {i for i, (_, meta, _) in enumerate(ops) if self.reject(number, i, meta["_id"])}
        kept = [op for i, op in enumerate(ops) if i not in rejected]
        answered: Iterator[dict] = iter([])
        if kept:
            body = ("\n".join(line for _, _, op_lines in kept for line in op_lines) + "\n").encode()
            reply = forward(Request(request.method, request.path, {"content-type": "application/x-ndjson"}, body))
            if reply.status != 200:
                return reply
            answered = iter(json.loads(reply.body)["items"])
        items = []
        for i, (op, meta, _) in enumerate(ops):
            if i in rejected:
                self.rejected.append(meta["_id"])
                items.append({op: {"_index": meta.get("_index"), "_id": meta["_id"], "status": 429, "error": {
                    "type": "es_rejected_execution_exception", "reason": "rejected execution of primary operation"}}})
            else:
                items.append(next(answered))
        return Reply(200, json.dumps({"took": 1, "errors": bool(rejected), "items": items}).encode())


def test_bulk_items_rejected_with_429_are_retried(settings, index_name, client, sample_path):
    """Only some documents of a bulk request rejected (a full write queue on one shard): the helper retries those."""
    handler = ItemRejections(lambda request, position, doc_id: request <= 3 and position % 2 == 0)
    papers = _papers(sample_path, 30)
    with LoopbackProxy(settings.url, handler) as proxy:
        manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url=proxy.url),
                                    batch_size=10, bulk_docs=5, initial_backoff=0.1)
        summary = manager.index_all(papers)
    # Request 1 (5 papers) loses items 0, 2, 4; their retry (request 2) loses 0 and 2 again; request 3 loses 1 more.
    assert len(handler.rejected) == 3 + 2 + 1 and len(set(handler.rejected)) == 3
    assert (summary.created, summary.updated, summary.failed) == (30, 0, 0), summary.failures
    assert _ids(client, index_name) == sorted(p.doc_id() for p in papers)


def test_items_rejected_beyond_max_retries_are_reported_and_indexed_by_a_rerun(settings, index_name, client, sample_path):
    papers = _papers(sample_path, 20)
    stubborn = {papers[3].doc_id(), papers[14].doc_id()}
    handler = ItemRejections(lambda request, position, doc_id: doc_id in stubborn)
    with LoopbackProxy(settings.url, handler) as proxy:
        manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url=proxy.url),
                                    batch_size=10, bulk_docs=5, max_retries=3, initial_backoff=0.05)
        summary = manager.index_all(papers)
    assert Counter(handler.rejected) == {doc_id: 4 for doc_id in stubborn}  # the first try and 3 retries
    assert (summary.created, summary.failed) == (18, 2)
    assert {f.doc_id for f in summary.failures} == stubborn
    for failure in summary.failures:
        assert failure.reason.startswith("es_rejected_execution_exception") and failure.origin.startswith(str(sample_path))
    rerun = OpenSearchManager(alias=index_name, model="minilm", settings=settings).index_all(papers, pending=True)
    assert (rerun.skipped, rerun.created, rerun.failed) == (18, 2, 0)
    assert _ids(client, index_name) == sorted(p.doc_id() for p in papers)


# ---- 2. documents the node rejects --------------------------------------------------------------------


def test_documents_rejected_by_the_mapping_are_reported_one_by_one(settings, index_name, client, sample_path, tmp_path):
    good = [json.loads(line) for line in itertools.islice(sample_path.open(encoding="utf-8"), 12)]
    bad = {  # `published` is a date field: the node refuses these documents, and only these
        "bad-date": {"id": "bad-date", "title": "A paper with a broken date", "abstract": "Text.", "published": "not-a-date"},
        "bad-month": {"id": "bad-month", "title": "A paper in month 13", "abstract": "Text.", "published": "2020-13-45"},
        "bad-day": {"id": "bad-day", "title": "A paper on February 30", "abstract": "Text.", "published": "2021-02-30"},
    }
    records = good[:4] + [bad["bad-date"]] + good[4:8] + [bad["bad-month"], bad["bad-day"]] + good[8:]
    path = tmp_path / "papers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    line_of = {r["id"]: n for n, r in enumerate(records, start=1)}

    manager = OpenSearchManager(alias=index_name, model="minilm", settings=settings, batch_size=5, bulk_docs=4)
    papers = list(read_papers(path))
    for paper in papers:  # the readers leave out dates the node would refuse; a library caller's Paper may still hold one
        if paper.id in bad:
            assert paper.published is None
            paper.published = bad[paper.id]["published"]
    results = list(manager.index_documents(papers))
    manager.refresh()

    assert len(results) == len(records) and {r.doc_id for r in results} == set(line_of)
    failed = {r.doc_id: r for r in results if r.outcome == "failed"}
    assert set(failed) == set(bad)
    for doc_id, result in failed.items():
        assert result.origin == f"{path}:{line_of[doc_id]}"
        assert "published" in result.reason and "parse" in result.reason, result.reason
    assert Counter(r.outcome for r in results) == {"created": len(good), "failed": len(bad)}
    assert _ids(client, index_name) == sorted(r["id"] for r in good)


# ---- 5. slow responses ----------------------------------------------------------------------------------


def _delay(pattern: str, seconds: float) -> Handler:
    def handler(request: Request, forward: Forward) -> Reply:
        if request.path.split("?")[0].endswith(pattern):
            time.sleep(seconds)
        return forward(request)

    return handler


@pytest.fixture
def small_index(settings, index_name, sample_path) -> str:
    manager = OpenSearchManager(alias=index_name, model="minilm", settings=settings)
    assert manager.index_all(_papers(sample_path, 5)).created == 5
    return index_name


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_a_search_slower_than_the_client_timeout_is_one_clear_error(settings, small_index, mode, sample_path):
    title = _papers(sample_path, 1)[0].title
    with LoopbackProxy(settings.url, _delay("/_search", 3.0)) as proxy:
        manager = OpenSearchManager(alias=small_index, model="minilm", settings=ConnectionSettings(url=proxy.url, timeout=1))
        started = time.monotonic()
        with pytest.raises(ConnectionFailedError, match=rf"Cannot reach OpenSearch at {proxy.url} \({mode} search in {small_index}\): request timed out"):
            manager.search(title, mode=mode, size=3)
        assert time.monotonic() - started < 15  # 1 try + 3 retries of 1 s each, not the 3 s answers
        assert proxy.requests[f"POST /{small_index}/_search"] == 4


def test_a_passage_fetch_slower_than_the_client_timeout_is_one_clear_error(settings, small_index, sample_path):
    title = _papers(sample_path, 1)[0].title
    with LoopbackProxy(settings.url, _delay("/_mget", 3.0)) as proxy:
        manager = OpenSearchManager(alias=small_index, model="minilm", settings=ConnectionSettings(url=proxy.url, timeout=1))
        with pytest.raises(MMRagError):
            manager.search(title, mode="bm25", size=3)


def test_status_slower_than_the_client_timeout_is_one_clear_error(settings, small_index):
    with LoopbackProxy(settings.url, _delay("/_search", 3.0)) as proxy:
        manager = OpenSearchManager(alias=small_index, settings=ConnectionSettings(url=proxy.url, timeout=1))
        with pytest.raises(MMRagError):
            manager.status()


# ---- 3b. a node lost mid-run, seen through the proxy (no restart needed) ---------------------------------


class Dead:
    """Proxy handler: forwards until `dead` is set, then drops every connection unanswered, like a lost node."""

    def __init__(self) -> None:
        self.dead = threading.Event()

    def __call__(self, request: Request, forward: Forward) -> Reply | None:
        return None if self.dead.is_set() else forward(request)


def _dies_after(papers: list[Paper], n: int, dead: threading.Event) -> Iterator[Paper]:
    """The papers, with the node dying when the reader reaches paper n + 1."""
    for i, paper in enumerate(papers):
        if i == n:
            dead.set()
        yield paper


@pytest.mark.parametrize("pending", [False, True])
def test_index_all_when_the_node_is_lost_mid_run_reports_or_raises_clearly(settings, index_name, sample_path, pending):
    papers = _papers(sample_path, 30)
    handler = Dead()
    with LoopbackProxy(settings.url, handler) as proxy:
        manager = OpenSearchManager(alias=index_name, model="minilm", settings=ConnectionSettings(url=proxy.url, timeout=5),
                                    batch_size=5, bulk_docs=5)
        try:
            summary = manager.index_all(_dies_after(papers, 12, handler.dead), pending=pending)
        except ConnectionFailedError:
            return  # a clear error is acceptable too
    assert summary.created + summary.failed == 30 and summary.failed >= 15


# ---- 3 and 4. the dedicated node, stopped for real -----------------------------------------------------


def _node_up() -> str:
    return local_node.start_node(port=DEDICATED_PORT, heap=DEDICATED_HEAP).url  # returns at once when it runs


@pytest.fixture
def dedicated_alias(dedicated_url: str) -> Iterator[str]:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    yield name
    if local_node.node_status(port=DEDICATED_PORT).running:
        client = make_client(ConnectionSettings(url=dedicated_url))
        client.indices.delete(index=f"{name}*", expand_wildcards="all", ignore_unavailable=True)
        client.delete(index=migration.STATE_INDEX, id=name, params={"ignore": 404})


@pytest.mark.node
def test_node_stopped_mid_index_then_pending_rerun_loses_nothing(dedicated_url, dedicated_alias, sample_path):
    papers = _papers(sample_path, 150)
    settings = ConnectionSettings(url=dedicated_url, timeout=5)
    manager = OpenSearchManager(alias=dedicated_alias, model="minilm", settings=settings, batch_size=10, bulk_docs=10)
    results = []
    stopped_after: list[int] = []

    def index_and_stop_the_node() -> None:
        for result in manager.index_documents(papers):
            results.append(result)
            if not stopped_after and sum(r.outcome == "created" for r in results) >= 10:
                stopped_after.append(len(results))
                assert local_node.stop_node(port=DEDICATED_PORT)

    try:
        seconds = _run_with_watchdog(index_and_stop_the_node)
        assert stopped_after, "the run finished before the node could be stopped"
        assert not local_node.node_status(port=DEDICATED_PORT).running
        outcomes = Counter(r.outcome for r in results)
        assert len(results) == 150 and {r.doc_id for r in results} == {p.doc_id() for p in papers}
        assert set(outcomes) == {"created", "failed"} and outcomes["failed"] >= 50, (outcomes, seconds)
        failures = [r for r in results if r.outcome == "failed"]
        for failure in failures:
            assert failure.doc_id and failure.origin.startswith(str(sample_path)) and failure.reason, failure
        # (a request caught by the shutdown itself may fail otherwise; all the later ones find no node)
        lost_node = sum("ConnectionError" in f.reason or "Cannot reach OpenSearch" in f.reason for f in failures)
        assert lost_node >= 50, Counter(f.reason[:60] for f in failures)
        # A new run against the stopped node says what is wrong, in one line, before touching anything.
        with pytest.raises(ConnectionFailedError, match=f"Cannot reach OpenSearch at {dedicated_url}"):
            manager.index_all(papers[:1])
    finally:
        _node_up()

    again = OpenSearchManager(alias=dedicated_alias, model="minilm", settings=settings, batch_size=32)
    summary = again.index_all(papers, pending=True)
    assert summary.failed == 0, summary.failures
    assert summary.skipped >= outcomes["created"]  # what was acknowledged before the stop was kept
    assert summary.skipped + summary.created + summary.updated == 150
    assert _ids(again.client, dedicated_alias) == sorted(p.doc_id() for p in papers)
    assert again.count() == 150


@pytest.mark.node
def test_node_stopped_mid_migration_resumes_without_loss(dedicated_url, dedicated_alias, sample_path):
    settings = ConnectionSettings(url=dedicated_url, timeout=5)
    source = OpenSearchManager(alias=dedicated_alias, model="minilm", settings=settings)
    assert source.index_all(_papers(sample_path, 40)).created == 40
    alias, to_model = dedicated_alias, model_path("minilm")
    pages = 0

    def stop_the_node_after_two_pages(phase, done, total) -> None:
        nonlocal pages
        if phase == "copy":
            pages += 1
            if pages == 2:
                assert local_node.stop_node(port=DEDICATED_PORT)

    def migrate() -> None:
        migration.Migrator(alias, to_model, settings=settings, page_size=8, on_progress=stop_the_node_after_two_pages).run()

    try:
        with pytest.raises(MigrationError, match="--resume") as info:
            _run_with_watchdog(migrate)
        assert pages == 2 and "progress is saved" in str(info.value)
    finally:
        _node_up()

    client = make_client(settings)
    state = migration.load_state(client, alias)
    assert (state.status, state.copied, state.target_index) == ("copying", 16, f"{alias}-v2")
    assert list(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]  # the app still reads the old index

    resumed = migration.Migrator(alias, to_model, settings=settings, page_size=8).run(resume=True)
    assert resumed.status == "swapped" and resumed.copied == 40
    assert list(client.indices.get_alias(name=alias)) == [f"{alias}-v2"]
    source_ids = _ids(client, f"{alias}-v1")
    assert len(source_ids) == 40 and _ids(client, f"{alias}-v2") == source_ids
    assert OpenSearchManager(alias=alias, settings=settings).count() == 40
