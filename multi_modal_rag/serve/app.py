"""The HTTP service the RAG app calls: search, index and delete through the alias, health and metrics.

One model per process, loaded from the index behind the alias and followed when a migration swaps it.
Query embeddings of concurrent requests are batched (`QueryBatcher`); OpenSearch calls and
reranking run on worker threads, so the event loop only routes and waits.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..documents import paper_from_record
from ..errors import (
    ConnectionFailedError,
    IndexMismatchError,
    IndexNotFoundError,
    InputError,
    MMRagError,
    ModelNotAvailableError,
    OpenSearchRequestError,
)
from ..manager import OpenSearchManager
from .batching import QueryBatcher
from .config import ServeConfig
from .guards import RequestGuard
from .metrics import RequestMetrics, ServiceMetrics
from .schemas import Hit, PaperResult, PapersResponse, SearchRequest, SearchResponse, hit_fields

logger = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[MMRagError], int]] = [  # the first match wins: subclasses before their bases
    (ConnectionFailedError, 503),
    (ModelNotAvailableError, 503),
    (IndexNotFoundError, 404),
    (IndexMismatchError, 409),
    (InputError, 422),
    (OpenSearchRequestError, 502),
    (MMRagError, 500),
]
FUSED_MODES = ("hybrid", "rrf", "bool")


class FieldError(Exception):
    """A request field the models accept but the service's limits do not."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Service:
    """The per-process state: one manager (binding, writer, searcher), the batcher and the metrics."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = ServiceMetrics()
        self.manager = OpenSearchManager(config.alias, None, config.connection(), query_cache_size=0,
                                       hybrid=config.hybrid_settings())
        self.searcher = self.manager.searcher
        self.batcher = QueryBatcher(
            self.searcher.encode_queries,
            max_wait=config.batch_wait_ms / 1000,
            max_batch=config.max_batch,
            cache_size=config.query_cache_size,
            on_batch=self.metrics.batch_size.observe,
            current_model=self.searcher.loaded_model_tag,
        )
        self.write_lock = None  # created in the running loop (see lifespan)

    def warm_up(self) -> None:
        """Follow the alias and load its model; raises if the node or the index is not there (yet)."""
        self.searcher.rebind()
        self.searcher.encode_queries(["warm up"])

    def readiness(self) -> dict[str, Any]:
        """Each check passed ("ok", the index name, the model) or why not; ready when all three passed."""
        checks: dict[str, str] = {}
        ok = {"node": False, "index": False, "model": False}
        try:
            self.manager.ping()
            checks["node"], ok["node"] = "ok", True
            index = self.manager.resolve_index()
            checks["index"] = index or f"no index behind alias {self.config.alias!r}; index papers first"
            ok["index"] = index is not None
            if index is not None:
                if self.searcher.loaded_model_tag() is None or self.manager.binding.index != index:
                    self.warm_up()
                checks["model"], ok["model"] = self.searcher.loaded_model_tag() or "not loaded", True
        except MMRagError as exc:
            checks[next(name for name, passed in ok.items() if not passed)] = str(exc)
        return {"ready": all(ok.values()), "alias": self.config.alias, "checks": checks}


def create_app(config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig.from_env()
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        service.write_lock = asyncio.Lock()
        try:
            await run_in_threadpool(service.warm_up)
        except MMRagError as exc:  # the service starts anyway; /readyz says what is missing until it is there
            logger.warning("not ready yet: %s", exc)
        yield
        await service.batcher.close()

    app = FastAPI(
        title="multi_modal_rag search service",
        version="1",
        description="Hybrid (BM25 + kNN) search over papers in OpenSearch, indexing through the alias, health and "
        "Prometheus metrics. With API keys configured, send `Authorization: Bearer KEY` (or `X-API-Key`).",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app, service)
    _add_routes(app, service)
    app.add_middleware(RequestGuard, api_keys=config.api_keys, max_body_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics, route_of=_route_label)  # outermost: counts refusals too
    return app


def _route_label(path: str) -> str:
    return "/papers/{id}" if path.startswith("/papers/") else path if path in KNOWN_ROUTES else "other"


KNOWN_ROUTES = {"/search", "/papers", "/status", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **({"field": field} if field else {})}, status_code=status)


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON in the request body: {first.get('ctx', {}).get('error', first['msg'])}")
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return _error(422, f"{field or 'body'}: {first['msg']}{more}", field or "body")

    @app.exception_handler(FieldError)
    async def over_limit(request: Request, exc: FieldError) -> JSONResponse:
        return _error(422, f"{exc.field}: {exc}", exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(MMRagError)
    async def library_error(request: Request, exc: MMRagError) -> JSONResponse:
        status = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
        if status >= 500 and status != 503:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the service log has the details")


def _add_routes(app: FastAPI, service: Service) -> None:
    config, metrics, searcher = service.config, service.metrics, service.searcher

    @app.post("/search", response_model=SearchResponse, summary="Search papers in any mode")
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        request.state.mode = body.mode
        _check_search_limits(body, config)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        vector = model = None
        if body.mode != "bm25":
            embedded = await service.batcher.embed(" ".join(body.query.split()))
            metrics.cache.labels("hit" if embedded.cached else "miss").inc()
            vector, model = embedded.vector, embedded.model
            timings["embed"] = time.perf_counter() - started
        hybrid = body.hybrid(searcher.hybrid)
        fetch = max(body.size, body.rerank_top) if body.rerank else body.size
        mark = time.perf_counter()
        hits = await run_in_threadpool(
            searcher.search, body.query, mode=body.mode, size=fetch, filters=body.filters.to_filters(),
            hybrid=hybrid, passages=fetch if body.passages else 0, vector=vector, vector_model=model,
        )
        retrievers: dict[str, Any] = {}
        if body.explain and body.mode in FUSED_MODES and hits:
            retrievers = await run_in_threadpool(
                searcher.retriever_scores, body.query, vector, [h.id for h in hits],
                filters=body.filters.to_filters(), hybrid=hybrid)
        elif body.mode in ("bm25", "knn"):
            retrievers = {h.id: {body.mode: {"rank": i, "score": h.score}} for i, h in enumerate(hits, start=1)}
        timings["opensearch"] = time.perf_counter() - mark
        if body.rerank:
            mark = time.perf_counter()
            hits = (await run_in_threadpool(searcher.rerank, body.query, hits, config.rerank_model))[: body.size]
            timings["rerank"] = time.perf_counter() - mark
        for stage, seconds in timings.items():
            metrics.stage.labels(stage).observe(seconds)
        return SearchResponse(
            query=body.query, mode=body.mode, index=(hits[0].index if hits else service.manager.binding.index) or "",
            model=searcher.loaded_model_tag(), took_ms=round((time.perf_counter() - started) * 1000, 2),
            timings_ms={k: round(v * 1000, 2) for k, v in timings.items()},
            hits=[Hit(id=h.id, score=h.score, title=h.title, passage=h.passage, highlights=h.highlights,
                      rerank_score=h.rerank_score, retrievers=retrievers.get(h.id), **hit_fields(h.source)) for h in hits],
        )

    @app.post("/papers", response_model=PapersResponse, summary="Index papers (a JSON list) through the alias")
    async def add_papers(papers: list[Any], refresh: bool = True) -> PapersResponse:
        if not papers:
            raise FieldError("body", "send a non-empty JSON list of papers")
        if len(papers) > config.max_papers:
            raise FieldError("body", f"{len(papers)} papers is over the limit of {config.max_papers} per request")
        records = [paper_from_record(record, f"papers[{i}]") for i, record in enumerate(papers)]
        results: list[PaperResult] = []

        def index() -> Any:
            def collect(result, summary) -> None:
                results.append(PaperResult(position=_position(result.origin), id=result.doc_id,
                                           outcome=result.outcome, reason=result.reason, chunks=result.chunks))
            return service.manager.index_all(records, refresh=refresh, on_result=collect)

        async with service.write_lock:  # one batch at a time per process: the writer keeps one bulk stream
            summary = await run_in_threadpool(index)
        results.sort(key=lambda r: r.position)
        return PapersResponse(index=service.manager.binding.index or "", created=summary.created,
                              updated=summary.updated, skipped=summary.skipped, failed=summary.failed, results=results)

    @app.delete("/papers/{paper_id:path}", summary="Delete a paper by id (ids from folders may contain '/')")
    async def delete_paper(paper_id: str) -> dict[str, Any]:
        async with service.write_lock:
            deleted = await run_in_threadpool(service.manager.delete, [paper_id])
        if not deleted:
            raise HTTPException(404, f"no paper with id {paper_id!r} in {config.alias}")
        return {"id": paper_id, "deleted": True}

    @app.get("/status", summary="Alias, index, model, documents, chunks, and the service's settings")
    async def status() -> dict[str, Any]:
        info = (await run_in_threadpool(service.manager.status)).to_dict()
        info["service"] = {"query_model": searcher.loaded_model_tag(), "max_batch": config.max_batch,
                           "batch_wait_ms": config.batch_wait_ms, "query_cache_size": config.query_cache_size,
                           "rerank_model": config.rerank_model, "auth": bool(config.api_keys),
                           "recipe": config.recipe}
        return info

    @app.get("/healthz", summary="The process is alive (no key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Node reachable, index present, model loaded")
    async def readyz() -> JSONResponse:
        report = await run_in_threadpool(service.readiness)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _position(origin: str) -> int:
    """`papers[3]` -> 3: per-paper results come back in the order they were sent."""
    inside = origin.partition("[")[2].partition("]")[0]
    return int(inside) if inside.isdigit() else -1


def _check_search_limits(body: SearchRequest, config: ServeConfig) -> None:
    if not body.query.strip():
        raise FieldError("query", "the query is empty")
    if len(body.query) > config.max_query_chars:
        raise FieldError("query", f"{len(body.query)} characters is over the limit of {config.max_query_chars}")
    if body.size > config.max_size:
        raise FieldError("size", f"{body.size} is over the limit of {config.max_size}")
    if body.rerank and not config.rerank_model:
        raise FieldError("rerank", "this service has no reranker; start it with `mmrag serve --rerank-model MODEL`")
    if body.rerank and body.rerank_top > config.max_rerank_top:
        raise FieldError("rerank_top", f"{body.rerank_top} is over the limit of {config.max_rerank_top}")
