"""Prometheus metrics: requests by route and status, latency, inference batches, queue and load state.

Each app has its own registry, so several apps in one process (tests, a Ray replica) never share or
collide on counters. Routes are labelled by their template (``/api/v1/models/{name}``), never by the
raw path, so the label set stays bounded whatever clients send.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# the methods of HTTP itself (RFC 9110, and PATCH): a label value each
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ranlens_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("ranlens_http_request_duration_seconds", "time to answer, by route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("ranlens_inference_batch_size", "images per model forward",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        # kind: "batch", one forward of a dynamic batch (whose size batch_size counts); "call", the model
        # part of an unbatched call (/ablate: 2 + one forward per module; /v2 infer: every picture of its
        # request), without decoding and the answer, which run in worker threads
        self.inference = Histogram("ranlens_inference_seconds", "time in the model, by served model and kind "
                                   "(batch: one batched forward; call: the forwards of one /ablate or /v2 "
                                   "request, decoding and answer excluded)",
                                   ["model", "kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("ranlens_inference_queue_depth", "requests waiting for an inference slot",
                                 registry=self.registry)
        self.running = Gauge("ranlens_inferences_running", "inferences running now", registry=self.registry)
        self.rejected = Counter("ranlens_inference_rejected", "requests answered 503 by backpressure",
                                ["reason"], registry=self.registry)
        self.model_loaded = Gauge("ranlens_model_loaded", "1 if the model is loaded and serving",
                                  ["model", "weights"], registry=self.registry)
        self.load_errors = Gauge("ranlens_model_load_errors", "configured models that failed to load",
                                 registry=self.registry)

    def record_batch(self, weights: str, size: int, seconds: float) -> None:
        """A batcher's report of one forward (called from its thread; prometheus-client is thread-safe)."""
        self.batch_size.observe(size)
        self.inference.labels(weights, "batch").observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP answer under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            # unmatched paths share one label: a scanner's thousand URLs must not become a thousand series
            template = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "unmatched")
            # the method is the client's word too: made-up ones (h11 passes any token) share one label
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
