"""Shared route dependencies: settings, the loaded models, the one a request names (``model=``), an
inference slot, and the query options several routes share (top_k; reduction, channel, colormap, alpha)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, Field

from ranlens.app.core.config import Settings
from ranlens.app.core.gate import Busy, InferenceGate
from ranlens.app.core.metrics import Metrics
from ranlens.app.core.payloads import DisplayOptions
from ranlens.app.core.problems import Problem
from ranlens.model import render
from ranlens.model.catalog import Catalog, UnknownModel
from ranlens.model.explainer import Explainer


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_catalog(request: Request) -> Catalog:
    catalog = getattr(request.app.state, "catalog", None)
    if catalog is None:
        error = getattr(request.app.state, "load_error", None) or "the models are still loading"
        raise Problem(503, "Model not ready", f"No model is loaded: {error}")
    return catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]


async def get_explainer(
    catalog: CatalogDep,
    model: Annotated[str | None, Query(description="the model to run, by architecture or weights name "
                                                   "(GET /api/v1/models lists them); default: the server's default")] = None,
) -> Explainer:
    try:
        return catalog.get(model)
    except UnknownModel as exc:
        raise _invalid("model", str(exc)) from None


ExplainerDep = Annotated[Explainer, Depends(get_explainer)]


async def served_model(
    name: Annotated[str, Path(description="a served model, by architecture or weights name",
                              examples=["attention56_cifar", "attention92_cifar.v8"])],
    catalog: CatalogDep,
) -> Explainer:
    """The loaded model the path names, by architecture or by weights."""
    try:
        return catalog.get(name)
    except UnknownModel as exc:
        raise Problem(404, "Unknown model", f"{exc}.") from None


ServedModel = Annotated[Explainer, Depends(served_model)]


def parameter_limits(explainer: Explainer) -> dict[str, int]:
    """The largest valid value of each model-bound query parameter for one model."""
    return {
        "top_k": len(explainer.weights.classes),
        # reduction=channel shows the same channel of every module, so the narrowest module bounds it
        "channel": min(m["channels"] for m in explainer.modules) - 1,
        # /explain's channel adds channel k to each module that has it, so the widest module bounds it:
        # the page keeps a channel per module (channel 200 of a 256-channel module beside a 64-channel one)
        "explain_channel": max(m["channels"] for m in explainer.modules) - 1,
    }


def catalog_limits(catalog: Catalog) -> dict[str, int]:
    """The limits that hold whichever model a request names: what the OpenAPI schema documents
    once the models are loaded (``ranlens.app.api.openapi``)."""
    each = [parameter_limits(e) for e in catalog]
    return {key: min(limits[key] for limits in each) for key in each[0]}


def _invalid(parameter: str, message: str) -> Problem:
    return Problem(422, "Invalid parameters", f"{parameter}: {message}",
                   errors=[{"loc": ["query", parameter], "msg": message}])


DEFAULT_TOP_K = 5


async def top_k_option(
    explainer: ExplainerDep,
    top_k: Annotated[int | None, Query(ge=1, description="how many classes to return, at most the number of "
                                                         "classes; default 5, or every class of a model with fewer")] = None,
) -> int:
    limit = parameter_limits(explainer)["top_k"]
    if top_k is None:  # a 3-class model answers its 3 rather than refusing the default
        return min(DEFAULT_TOP_K, limit)
    if top_k > limit:
        raise _invalid("top_k", f"must be in [1, {limit}] (the model has {limit} classes); got {top_k}")
    return top_k


TopK = Annotated[int, Depends(top_k_option)]

Reduction = Literal[render.REDUCTIONS]  # type: ignore[valid-type]
Colormap = Literal[render.COLORMAPS]  # type: ignore[valid-type]


class DisplayQuery(BaseModel):
    reduction: Reduction = Field("mean", description="mean or max over channels, one channel (then give channel), or added: "
                                               "each position's mean over channels of M * |T|, what (1 + M) * T adds")
    channel: int | None = Field(None, ge=0, description="the channel to show; required with reduction=channel "
                                                        "(and unused with the others), below the fewest channels "
                                                        "of any module")
    colormap: Colormap = Field("viridis", description="matplotlib colormap of the overlays")
    alpha: float = Field(0.6, ge=0, le=1, description="overlay opacity")


async def display_options(query: Annotated[DisplayQuery, Query()], explainer: ExplainerDep) -> DisplayOptions:
    limit = parameter_limits(explainer)["channel"]
    if query.channel is not None and query.channel > limit:
        raise _invalid("channel", f"must be in [0, {limit}] (the fewest channels of any module is {limit + 1}); "
                                  f"got {query.channel}")
    if query.reduction == "channel" and query.channel is None:
        raise _invalid("channel", f"reduction=channel needs channel, an integer in [0, {limit}]")
    return DisplayOptions(query.reduction, query.channel or 0, query.colormap, query.alpha)


Display = Annotated[DisplayOptions, Depends(display_options)]


def _explain_channel_within(explainer: Explainer, channel: int | None) -> int | None:
    limit = parameter_limits(explainer)["explain_channel"]
    if channel is not None and channel > limit:
        raise _invalid("channel", f"must be in [0, {limit}] (the most channels of any module is {limit + 1}); "
                                  f"got {channel}")
    return channel


async def explain_channel_option(
    explainer: ExplainerDep,
    channel: Annotated[int | None, Query(ge=0, description="add channel k of each module that has more than k "
                                                           "channels (its field channel): the page's one-channel "
                                                           "view, asked for on demand; below the most channels "
                                                           "of any module")] = None,
) -> int | None:
    return _explain_channel_within(explainer, channel)


async def explain_channel_required(
    explainer: ExplainerDep,
    channel: Annotated[int, Query(ge=0, description="channel k of each module that has more than k channels; "
                                                    "below the most channels of any module")],
) -> int:
    return _explain_channel_within(explainer, channel)


ExplainChannel = Annotated[int | None, Depends(explain_channel_option)]
OneChannel = Annotated[int, Depends(explain_channel_required)]


async def run_inference(request: Request, fn, explainer: Explainer, *args, batched: bool = True, prepare=None,
                        finish=None):
    """Runs ``fn`` in a worker thread once the gate gives a slot (a full queue or a long wait is a 503
    with Retry-After). ``batched``: ``fn(explain, *args)``, where ``explain(picture)`` joins the model's
    dynamic batch; otherwise ``fn(explainer, *args)`` runs whole on the server's torch thread, and with
    ``prepare`` and ``finish``, ``finish(fn(explainer, prepare(*args)))``: decoding and building the
    answer run in worker threads, as the batched routes do them, so they do not hold the threads every
    model's forwards share, and within the slot, so the gate still bounds their memory."""
    gate: InferenceGate = request.app.state.gate
    metrics: Metrics = request.app.state.metrics
    try:
        async with gate.slot():
            if batched:
                with request.app.state.batchers[explainer.weights.name].ticket() as ticket:
                    return await anyio.to_thread.run_sync(fn, ticket.explain, *args)
            if prepare is not None:
                args = (await anyio.to_thread.run_sync(prepare, *args),)
            started = time.perf_counter()
            result = await request.app.state.torch.acall(fn, explainer, *args)
            metrics.inference.labels(explainer.weights.name, "call").observe(time.perf_counter() - started)
            if finish is not None:
                result = await anyio.to_thread.run_sync(finish, result)
            return result
    except Busy as exc:
        metrics.rejected.labels(exc.reason).inc()
        raise
