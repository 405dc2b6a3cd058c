"""Inference routes: /predict for programs, /explain for the page, and the colormaps the page draws with."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request

from ranlens.app.api.deps import Display, ExplainChannel, ExplainerDep, OneChannel, SettingsDep, TopK, run_inference
from ranlens.app.api.openapi import UPLOAD_BODY, UPLOAD_PROBLEMS
from ranlens.app.api.schemas import ChannelResponse, Colormaps, ExplainResponse, PredictResponse
from ranlens.app.core import payloads
from ranlens.app.core.upload import read_upload
from ranlens.model import render

router = APIRouter(prefix="/api/v1", tags=["predict"])


async def _run_upload(request: Request, explainer, settings, build, **options) -> dict:
    """Reads the upload (streamed, within the size limit), then builds the answer from it in the
    model's dynamic batch; ``build`` is one of ``ranlens.app.core.payloads``' bodies."""
    started = time.perf_counter()
    upload = await read_upload(request, settings.max_upload_bytes, settings.body_timeout_s)
    fn = partial(build, max_pixels=settings.max_image_pixels, started=started, **options)
    return await run_inference(request, fn, explainer, upload.data, upload.content_type)


# exclude_unset, not exclude_none: overlay and mask are left out unless asked for, while a null
# out_of_distribution (weights not calibrated) is an answer and stays
@router.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True,
             openapi_extra=UPLOAD_BODY, responses=UPLOAD_PROBLEMS,
             summary="Classify an image and report every attention module's soft mask")
async def predict(
    request: Request,
    explainer: ExplainerDep,
    settings: SettingsDep,
    top_k: TopK,
    display: Display,
    overlays: Annotated[bool, Query(description="add each module's overlay as a JPEG data URI")] = False,
    masks: Annotated[bool, Query(description="add each module's channel-reduced mask values")] = False,
) -> dict:
    return await _run_upload(request, explainer, settings, payloads.predict, display_size=settings.display_size,
                             top_k=top_k, overlays=overlays, masks=masks, display=display)


# exclude_unset: channel and the full mask (data, lo, hi) are left out unless asked for
@router.post("/explain", response_model=ExplainResponse, response_model_exclude_unset=True,
             openapi_extra=UPLOAD_BODY, responses=UPLOAD_PROBLEMS,
             summary="What the web page draws at once: all class probabilities and each module's reduced masks",
             description="Per module: the mean, max and added reductions as (h, w) maps, the 8 most varied "
                         "channels, a histogram of all mask values and the trunk magnitude before and after "
                         "(1 + M), each map as base64 little-endian uint16 mapping 0..65535 linearly onto "
                         "[lo, hi]. channel=k adds channel k of every module that has it; all_channels=true "
                         "adds each whole (channels, h, w) mask, which at 224 pixels is megabytes.")
async def explain(
    request: Request,
    explainer: ExplainerDep,
    settings: SettingsDep,
    channel: ExplainChannel,
    all_channels: Annotated[bool, Query(description="add each module's whole soft mask, every channel "
                                                    "(data, lo, hi)")] = False,
) -> dict:
    return await _run_upload(request, explainer, settings, payloads.explain, display_size=settings.display_size,
                             channel=channel, all_channels=all_channels)


# exclude_unset: a module with too few channels has no channel field
@router.post("/explain/channel", response_model=ChannelResponse, response_model_exclude_unset=True,
             openapi_extra=UPLOAD_BODY, responses=UPLOAD_PROBLEMS,
             summary="One channel of every module's soft mask, and nothing else",
             description="What the page asks for when it shows a single channel: the image runs again (any "
                         "worker or replica can answer) and the answer is channel k of each module that has "
                         "more than k channels, as /explain's channel=k gives it, without the rest of /explain.")
async def explain_channel(request: Request, explainer: ExplainerDep, settings: SettingsDep,
                          channel: OneChannel) -> dict:
    return await _run_upload(request, explainer, settings, payloads.explain_channel, channel=channel)


@router.get("/colormaps", response_model=Colormaps, summary="The colormaps as 256-entry RGB lookup tables")
def colormaps() -> dict:
    return {name: render.colormap_lut(name).tolist() for name in render.COLORMAPS}
