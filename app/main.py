"""The ranlens FastAPI application: ``uvicorn ranlens.app.main:app`` or ``ranlens serve``."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files

import torch
from fastapi import FastAPI

from ranlens import __version__
from ranlens.app.api.docs import install_docs
from ranlens.app.api.openapi import install_openapi
from ranlens.app.api.routes import health, metrics as metrics_route, models, pages, predict, teach, v2
from ranlens.app.core.config import Settings, get_settings
from ranlens.app.core.gate import InferenceGate
from ranlens.app.core.http import StaticAssets, install_transport
from ranlens.app.core.metrics import Metrics, RequestMetrics
from ranlens.app.core.problems import install_problem_handlers
from ranlens.model.batching import Batcher
from ranlens.model.torch_thread import TorchThread
from ranlens.model.catalog import load_catalog

log = logging.getLogger("ranlens")
STATIC = files("ranlens.static")  # package data: found the same way in a wheel and in a source tree


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # every forward and model load, on the torch threads (model/torch_thread.py)
        workers, threads = settings.forward_threads()
        torch_thread = TorchThread(workers)
        app.state.torch = torch_thread
        torch_thread.everywhere(partial(torch.set_num_threads, threads))
        gate = InferenceGate(settings.max_concurrent_inferences, settings.max_queued_inferences,
                             settings.max_queue_wait_s)
        app.state.gate = gate
        metrics.queue_depth.set_function(lambda: gate.waiting)
        metrics.running.set_function(lambda: gate.running)
        try:
            catalog, errors = await torch_thread.acall(
                load_catalog, settings.weights, settings.arch, settings.default_model)
        except Exception as exc:  # keep serving: /readyz and the page say what went wrong
            catalog, errors = None, [str(exc)]
        app.state.catalog = catalog
        app.state.load_error = "; ".join(errors) or None
        for explainer in catalog or ():
            metrics.model_loaded.labels(explainer.name, explainer.weights.name).set(1)
        metrics.load_errors.set(len(errors))
        if catalog is not None:
            log.info("serving %s (default %s)", ", ".join(e.weights.name for e in catalog), catalog.default_weights)
        for error in errors:
            log.error("could not load a model: %s", error)
        if settings.trace:  # after the start, beside the first requests (the Python forward until then)
            for explainer in catalog or ():
                torch_thread.submit(explainer.trace)
        app.state.batchers = {
            e.weights.name: Batcher(e, settings.max_batch_size, settings.batch_window_ms / 1000,
                                    on_batch=partial(metrics.record_batch, e.weights.name),
                                    submit=torch_thread.submit, concurrency=workers)
            for e in catalog or ()
        }
        yield
        for batcher in app.state.batchers.values():
            batcher.close()
        torch_thread.shutdown()

    app = FastAPI(
        title="ranlens",
        summary="Where a Residual Attention Network looks: predictions and every attention module's soft mask.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves Swagger UI from local files; ReDoc cannot run under the CSP
        redoc_url=None,
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.catalog = None
    app.state.load_error = None
    install_problem_handlers(app)
    install_transport(app)
    app.add_middleware(RequestMetrics, metrics=metrics)
    install_openapi(app)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(teach.router)
    app.include_router(v2.router)
    app.include_router(pages.router)
    install_docs(app)
    app.mount("/static", StaticAssets(directory=str(STATIC)), name="static")
    return app


app = create_app()
