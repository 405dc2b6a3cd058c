"""Shared route dependencies: settings, the loaded model, and an inference slot."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Request

from ranlens.app.core.config import Settings
from ranlens.model.explainer import Explainer
from ranlens.app.core.problems import Problem


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_explainer(request: Request) -> Explainer:
    explainer = getattr(request.app.state, "explainer", None)
    if explainer is None:
        error = getattr(request.app.state, "load_error", None) or "the model is still loading"
        raise Problem(503, "Model not ready", f"The model is not loaded: {error}")
    return explainer


SettingsDep = Annotated[Settings, Depends(get_settings)]
ExplainerDep = Annotated[Explainer, Depends(get_explainer)]


async def run_inference(request: Request, fn, *args):
    """Runs ``fn`` in a worker thread, at most ``max_concurrent_inferences`` at once."""
    limiter: anyio.CapacityLimiter = request.app.state.limiter
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
