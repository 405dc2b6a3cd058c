from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from PIL import Image

from ranlens.app.api.deps import ExplainerDep, SettingsDep, run_inference
from ranlens.app.api.schemas import PredictResponse
from ranlens.model import render
from ranlens.app.core.config import Settings
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.app.core.problems import Problem
from ranlens.app.core.upload import read_upload
from ranlens.model.preprocess import center_crop

router = APIRouter(prefix="/api/v1", tags=["predict"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "JPEG, PNG, GIF, WebP, BMP or TIFF image"}},
        }}},
    }
}
PROBLEMS = {
    code: {"description": text, "content": {"application/problem+json": {}}}
    for code, text in [(400, "undecodable image"), (413, "upload or image too large"),
                       (415, "not a supported image type"), (422, "invalid parameters"),
                       (503, "model not ready")]
}

Reduction = Literal["mean", "max", "channel"]
Colormap = Literal[render.COLORMAPS]  # type: ignore[valid-type]


def _check_channel(explainer: Explainer, reduction: str, channel: int) -> None:
    if reduction != "channel":
        return
    smallest = min(m["channels"] for m in explainer.modules)
    if channel >= smallest:
        raise Problem(422, "Invalid parameters",
                      f"channel must be below {smallest}, the fewest channels of any module; got {channel}")


def _decode(settings: Settings, data: bytes, content_type: str) -> Image.Image:
    return decode_image(data, settings.max_image_pixels, content_type)


def _predict(explainer: Explainer, settings: Settings, data: bytes, content_type: str, top_k: int,
             overlays: bool, masks: bool, reduction: str, channel: int, colormap: str, alpha: float) -> dict:
    t0 = time.perf_counter()
    image = _decode(settings, data, content_type)
    t1 = time.perf_counter()
    result = explainer.explain(image)
    t2 = time.perf_counter()
    display = center_crop(image, settings.display_size) if overlays else None
    attention = []
    for a in result.attention:
        values = a.reduced(reduction, channel)
        entry = {"module": a.module, "stage": a.stage, "shape": list(a.shape), "channels": a.channels,
                 "reduction": reduction if reduction != "channel" else f"channel {channel}",
                 "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}
        if overlays:
            entry["overlay"] = render.data_uri(render.overlay(display, values, colormap, alpha))
        if masks:
            entry["mask"] = values.round(6).tolist()
        attention.append(entry)
    t3 = time.perf_counter()
    return {
        "model": result.model, "weights": result.weights,
        "predictions": [p.__dict__ for p in result.top(top_k)],
        "attention": attention,
        "timing_ms": {"decode": 1000 * (t1 - t0), **result.timing_ms, "render": 1000 * (t3 - t2)},
    }


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
             openapi_extra=UPLOAD_BODY, responses=PROBLEMS,
             summary="Classify an image and report every attention module's soft mask")
async def predict(
    request: Request,
    explainer: ExplainerDep,
    settings: SettingsDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return")] = 5,
    overlays: Annotated[bool, Query(description="add each module's overlay as a PNG data URI")] = False,
    masks: Annotated[bool, Query(description="add each module's channel-reduced mask values")] = False,
    reduction: Annotated[Reduction, Query(description="mean or max over channels, or one channel")] = "mean",
    channel: Annotated[int, Query(ge=0, description="the channel, with reduction=channel")] = 0,
    colormap: Annotated[Colormap, Query(description="matplotlib colormap of the overlays")] = "viridis",
    alpha: Annotated[float, Query(ge=0, le=1, description="overlay opacity")] = 0.6,
) -> dict:
    started = time.perf_counter()
    if top_k > len(explainer.weights.classes):
        raise Problem(422, "Invalid parameters",
                      f"top_k must be at most {len(explainer.weights.classes)}, the number of classes; got {top_k}")
    _check_channel(explainer, reduction, channel)
    upload = await read_upload(request, settings.max_upload_bytes)
    body = await run_inference(request, _predict, explainer, settings, upload.data, upload.content_type,
                               top_k, overlays, masks, reduction, channel, colormap, alpha)
    body["timing_ms"]["total"] = 1000 * (time.perf_counter() - started)
    return body


def _explain_page(explainer: Explainer, settings: Settings, data: bytes, content_type: str) -> dict:
    t0 = time.perf_counter()
    image = _decode(settings, data, content_type)
    t1 = time.perf_counter()
    result = explainer.explain(image)
    display = center_crop(image, settings.display_size)
    thumbnail = image.copy()
    thumbnail.thumbnail((640, 640))
    attention = []
    for a in result.attention:
        encoded, lo, hi = render.quantize(a.mask)
        mean = a.reduced("mean")
        before = np.abs(a.trunk).mean(axis=0)
        after = np.abs((1 + a.mask) * a.trunk).mean(axis=0)
        attention.append({
            "module": a.module, "stage": a.stage, "shape": list(a.shape), "channels": a.channels,
            "data": encoded, "lo": lo, "hi": hi,
            "min": float(mean.min()), "max": float(mean.max()), "mean": float(mean.mean()),
            # mean |T| over channels per position, before and after (1 + M): what the mask amplifies
            "trunk_before": before.round(5).tolist(), "trunk_after": after.round(5).tolist(),
        })
    return {
        "model": result.model, "weights": result.weights,
        "image": {"width": image.width, "height": image.height},
        "images": {
            "uploaded": render.data_uri(thumbnail, "JPEG"),
            "display": render.data_uri(display, "JPEG"),
            "model_input": render.data_uri(result.model_input),
        },
        "predictions": [p.__dict__ for p in result.predictions],
        "attention": attention,
        "timing_ms": {"decode": 1000 * (t1 - t0), **result.timing_ms},
    }


@router.post("/explain", openapi_extra=UPLOAD_BODY, responses=PROBLEMS,
             summary="Everything the web page draws: all class probabilities and full soft masks",
             description="Masks come as base64 little-endian uint16 arrays of shape (channels, h, w), "
                         "mapping 0..65535 linearly onto [lo, hi].")
async def explain(request: Request, explainer: ExplainerDep, settings: SettingsDep) -> dict:
    started = time.perf_counter()
    upload = await read_upload(request, settings.max_upload_bytes)
    body = await run_inference(request, _explain_page, explainer, settings, upload.data, upload.content_type)
    body["timing_ms"]["total"] = 1000 * (time.perf_counter() - started)
    return body


@router.get("/colormaps", summary="The colormaps as 256-entry RGB lookup tables")
def colormaps() -> dict:
    return {name: render.colormap_lut(name).tolist() for name in render.COLORMAPS}
