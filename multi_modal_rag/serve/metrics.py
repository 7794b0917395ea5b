"""Prometheus metrics of the service: requests, latency by stage, encode batch sizes, cache hits.

With `--workers N` each worker is a process; `mmrag serve` then sets PROMETHEUS_MULTIPROC_DIR and
`/metrics` adds up the files all workers write (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # one per app, so several apps in a process (tests) do not collide
        self.requests = Counter("mmrag_requests", "HTTP requests by route, search mode and status code",
                                ["route", "mode", "status"], registry=self.registry)
        self.latency = Histogram("mmrag_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("mmrag_search_stage_seconds", "Time of each search stage: embed, opensearch, rerank",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mmrag_encode_batch_size", "Queries embedded per encode call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.cache = Counter("mmrag_query_cache_lookups", "Query-embedding cache lookups by result (hit, miss)",
                             ["result"], registry=self.registry)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: every response counted by route, mode and status, and timed (refusals included)."""

    def __init__(self, app: Any, *, metrics: ServiceMetrics, route_of: Callable[[str], str]):
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = self.route_of(scope.get("path", ""))
            mode = scope.get("state", {}).get("mode", "")  # set by /search through request.state
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, mode, str(status)).inc()
