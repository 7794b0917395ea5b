"""The HTTP service the RAG app calls: search, index and delete through the alias, health and metrics.

One model per process, loaded from the index behind the alias and followed when a migration swaps it.
Query embeddings of concurrent requests are batched (`QueryBatcher`); OpenSearch calls and
reranking run on worker threads, so the event loop only routes and waits.
"""

# No `from __future__ import annotations`: the routes' annotations name this service's limits (closures), and
# FastAPI must see them evaluated.
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..documents import RecordError, paper_from_record
from ..errors import MMRagError
from ..manager import OpenSearchManager
from .batching import QueryBatcher
from .config import ServeConfig
from .guards import RequestGuard
from .metrics import RequestMetrics, ServiceMetrics
from .responses import FieldError, add_error_handlers, api_key, bearer, error_responses, redact
from .schemas import (
    Deleted,
    Hit,
    PaperResult,
    PapersResponse,
    Readiness,
    SearchResponse,
    hit_fields,
    search_request_model,
)

logger = logging.getLogger(__name__)

FUSED_MODES = ("hybrid", "rrf", "bool")


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
            checks[next(name for name, passed in ok.items() if not passed)] = redact(str(exc))
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
    add_error_handlers(app, config.alias)
    _add_routes(app, service)
    app.add_middleware(RequestGuard, key_digests=config.key_digests(), max_body_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics, route_of=_route_label)  # outermost: counts refusals too
    return app


def _route_label(path: str) -> str:
    return "/papers/{id}" if path.startswith("/papers/") else path if path in KNOWN_ROUTES else "other"


KNOWN_ROUTES = {"/search", "/papers", "/status", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}


PAPER_ID = r"^[^/\x00-\x1f\x7f]*[^/.\x00-\x1f\x7f][^/\x00-\x1f\x7f]*(/[^/\x00-\x1f\x7f]*[^/.\x00-\x1f\x7f][^/\x00-\x1f\x7f]*)*$"
MAX_ID_BYTES = 512  # OpenSearch refuses longer _ids, so no paper has one
DELETE_LINK = {"DeletePaper": {"operationId": "delete_paper", "parameters": {"paper_id": "$response.body#/results/0/id"},
                               "description": "delete the first paper sent"}}


def _add_routes(app: FastAPI, service: Service) -> None:
    config, metrics, searcher = service.config, service.metrics, service.searcher
    auth = bool(config.key_digests())
    secured = [Depends(bearer), Depends(api_key)] if auth else []  # the schema's security schemes (either one)
    SearchBody = search_request_model(config.max_query_chars, config.max_size, config.max_rerank_top,
                                      bool(config.rerank_model))

    def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
        return error_responses(*codes, auth=auth)

    @app.post("/search", response_model=SearchResponse, summary="Search papers in any mode", dependencies=secured,
              responses=responses(400, 404, 409, 422, 502, 503))
    async def search(body: SearchBody, request: Request) -> SearchResponse:  # type: ignore[valid-type]
        request.state.mode = body.mode
        if body.rerank and not config.rerank_model:
            raise FieldError("rerank", "this service has no reranker; start it with `mmrag serve --rerank-model MODEL`")
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
                filters=body.filters.to_filters(), hybrid=hybrid, vector_model=model)
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

    @app.post("/papers", response_model=PapersResponse, summary="Index papers (a JSON list) through the alias",
              dependencies=secured, responses={**responses(400, 404, 409, 422, 502, 503), 200: {"links": DELETE_LINK}})
    async def add_papers(
        papers: Annotated[list[Any], Body(min_length=1, max_length=config.max_papers, description=(
            f"1 to {config.max_papers} papers; each a JSON object with title, abstract, content, ... (anything else, "
            f"or a paper of over {config.max_paper_chars} characters of text, fails alone, with its reason)"))],
        refresh: Literal["true", "false"] = "true",
    ) -> PapersResponse:
        records = [_capped(paper_from_record(record, f"papers[{i}]"), config.max_paper_chars)
                   for i, record in enumerate(papers)]
        results: list[PaperResult] = []

        def index() -> Any:
            def collect(result, summary) -> None:
                results.append(PaperResult(position=_position(result.origin), id=result.doc_id,
                                           outcome=result.outcome, reason=result.reason, chunks=result.chunks))
            return service.manager.index_all(records, refresh=refresh == "true", on_result=collect)

        async with service.write_lock:  # one batch at a time per process: the writer keeps one bulk stream
            summary = await run_in_threadpool(index)
        results.sort(key=lambda r: r.position)
        return PapersResponse(index=service.manager.binding.index or "", created=summary.created,
                              updated=summary.updated, skipped=summary.skipped, failed=summary.failed, results=results)

    @app.delete("/papers/{paper_id:path}", response_model=Deleted, operation_id="delete_paper", dependencies=secured,
                summary="Delete a paper by id (ids from folders may contain '/')", responses=responses(404, 422, 502, 503))
    async def delete_paper(
        request: Request,
        paper_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_BYTES, pattern=PAPER_ID, description=(
            "the paper's id: no control characters, no empty, `.` or `..` segment"))],
    ) -> Deleted:
        if request.scope["path"] != f"/papers/{paper_id}":  # the route's `$` lets a trailing newline through
            raise FieldError("paper_id", "the id ends in a control character")
        deleted = False
        if len(paper_id.encode("utf-8")) <= MAX_ID_BYTES:
            async with service.write_lock:
                deleted = await run_in_threadpool(service.manager.delete, [paper_id])
        if not deleted:
            raise HTTPException(404, f"no paper with id {paper_id!r} in {config.alias}")
        return Deleted(id=paper_id, deleted=True)

    @app.get("/status", summary="Alias, index, model, documents, chunks, and the service's settings",
             dependencies=secured, responses=responses(404, 502, 503))
    async def status() -> dict[str, Any]:
        info = (await run_in_threadpool(service.manager.status)).to_dict()
        info["service"] = {"query_model": searcher.loaded_model_tag(), "max_batch": config.max_batch,
                           "batch_wait_ms": config.batch_wait_ms, "query_cache_size": config.query_cache_size,
                           "rerank_model": config.rerank_model, "auth": auth,
                           "recipe": config.recipe}
        return info

    @app.get("/healthz", summary="The process is alive (no key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Node reachable, index present, model loaded", response_model=Readiness,
             dependencies=secured, responses={**responses(), 503: {"model": Readiness, "description": "Not ready: why"}})
    async def readyz() -> JSONResponse:
        report = await run_in_threadpool(service.readiness)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=secured,
             responses={**responses(), 200: {"description": "Prometheus text format", "content": {
                 "text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _position(origin: str) -> int:
    """`papers[3]` -> 3: per-paper results come back in the order they were sent."""
    inside = origin.partition("[")[2].partition("]")[0]
    return int(inside) if inside.isdigit() else -1


def _capped(record: Any, max_chars: int) -> Any:
    """A paper of over `max_chars` characters of text fails alone, before it reaches the model."""
    if isinstance(record, RecordError):
        return record
    chars = len(record.title) + len(record.abstract) + len(record.content)
    if chars <= max_chars:
        return record
    return RecordError(record.origin, f"{chars} characters of text is over the limit of {max_chars} per paper",
                       record.id)
