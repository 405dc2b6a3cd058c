"""Shared route dependencies: settings, the loaded model, an inference slot, and the query options
several routes share (top_k; the display options reduction, channel, colormap, alpha)."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, Field

from ranlens.app.core.config import Settings
from ranlens.app.core.payloads import DisplayOptions
from ranlens.app.core.problems import Problem
from ranlens.model import render
from ranlens.model.explainer import Explainer


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


def served_model(
    name: Annotated[str, Path(description="the served model, by architecture or weights name",
                              examples=["attention56_cifar", "attention56_cifar.v5"])],
    explainer: ExplainerDep,
) -> Explainer:
    """The loaded model, when the path names it by architecture or by weights."""
    if name not in {explainer.name, explainer.weights.name}:
        raise Problem(404, "Unknown model", f"This server serves {explainer.name!r}, not {name!r}.")
    return explainer


ServedModel = Annotated[Explainer, Depends(served_model)]


def parameter_limits(explainer: Explainer) -> dict[str, int]:
    """The largest valid value of each model-bound query parameter: the OpenAPI schema documents
    these same numbers once the model is loaded (``ranlens.app.core.openapi``)."""
    return {
        "top_k": len(explainer.weights.classes),
        # reduction=channel shows the same channel of every module, so the narrowest module bounds it
        "channel": min(m["channels"] for m in explainer.modules) - 1,
    }


def _invalid(parameter: str, message: str) -> Problem:
    return Problem(422, "Invalid parameters", f"{parameter}: {message}",
                   errors=[{"loc": ["query", parameter], "msg": message}])


def top_k_option(
    explainer: ExplainerDep,
    top_k: Annotated[int, Query(ge=1, description="how many classes to return, at most the number of classes")] = 5,
) -> int:
    limit = parameter_limits(explainer)["top_k"]
    if top_k > limit:
        raise _invalid("top_k", f"must be in [1, {limit}] (the model has {limit} classes); got {top_k}")
    return top_k


TopK = Annotated[int, Depends(top_k_option)]

Reduction = Literal[render.REDUCTIONS]  # type: ignore[valid-type]
Colormap = Literal[render.COLORMAPS]  # type: ignore[valid-type]


class DisplayQuery(BaseModel):
    reduction: Reduction = Field("mean", description="mean or max over channels, one channel (then give channel), or added: "
                                               "each position's mean over channels of M * |T|, what (1 + M) * T adds")
    channel: int | None = Field(None, ge=0, description="the channel to show; required with reduction=channel, "
                                                        "below the fewest channels of any module")
    colormap: Colormap = Field("viridis", description="matplotlib colormap of the overlays")
    alpha: float = Field(0.6, ge=0, le=1, description="overlay opacity")


def display_options(query: Annotated[DisplayQuery, Query()], explainer: ExplainerDep) -> DisplayOptions:
    limit = parameter_limits(explainer)["channel"]
    if query.channel is not None and query.channel > limit:
        raise _invalid("channel", f"must be in [0, {limit}] (the fewest channels of any module is {limit + 1}); "
                                  f"got {query.channel}")
    if query.reduction == "channel" and query.channel is None:
        raise _invalid("channel", f"reduction=channel needs channel, an integer in [0, {limit}]")
    return DisplayOptions(query.reduction, query.channel or 0, query.colormap, query.alpha)


Display = Annotated[DisplayOptions, Depends(display_options)]


async def run_inference(request: Request, fn, *args):
    """Runs ``fn`` in a worker thread, at most ``max_concurrent_inferences`` at once."""
    limiter: anyio.CapacityLimiter = request.app.state.limiter
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
