"""The JSON bodies of the inference routes, built from an upload in a worker thread.

Kept apart from the routes so that they stay request parsing plus a response model; the shapes here
are the ones ``ranlens.app.api.schemas`` documents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ranlens.model import render
from ranlens.model.explainer import Explainer, Explanation, ModuleAttention
from ranlens.model.imaging import decode_image
from ranlens.model.preprocess import model_view


# a decoded picture to its Explanation: the model's dynamic batch (app) or Explainer.explain itself
Explain = Callable[[Image.Image], Explanation]


@dataclass(frozen=True)
class DisplayOptions:
    """How /predict reduces, colours and blends each module's mask."""

    reduction: str = "mean"
    channel: int = 0
    colormap: str = "viridis"
    alpha: float = 0.6

    @property
    def label(self) -> str:
        return f"channel {self.channel}" if self.reduction == "channel" else self.reduction


def _ms(seconds: float) -> float:
    return 1000 * seconds


def _module(a: ModuleAttention) -> dict:
    """Which module a mask is from and its size: the fields every route's per-module entry starts with."""
    return {"module": a.module, "stage": a.stage, "shape": list(a.shape), "channels": a.channels}


def _with_channel(entry: dict, a: ModuleAttention, channel: int | None) -> dict:
    """``entry`` plus channel ``channel`` of the module's mask, where the module has that channel."""
    if channel is not None and channel < a.channels:
        entry["channel"] = _channels(a.mask, [channel])
    return entry


def predict(explain: Explain, image: bytes, content_type: str, *, max_pixels: int, display_size: int,
            top_k: int, overlays: bool, masks: bool, display: DisplayOptions, started: float) -> dict:
    """Top-k classes and, per module, the channel-reduced mask's range, optionally drawn and listed."""
    t0 = time.perf_counter()
    picture = decode_image(image, max_pixels, content_type)
    t1 = time.perf_counter()
    result = explain(picture)
    t2 = time.perf_counter()
    backdrop = model_view(picture, result.model_input.width, display_size) if overlays else None
    attention = []
    for a in result.attention:
        values = a.reduced(display.reduction, display.channel)
        entry = {**_module(a), "reduction": display.label,
                 "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}
        if overlays:
            # JPEG: a photo blended with a colour map, which PNG took 4.6 ms and 94 KB to encode, JPEG
            # (quality 90) 0.16 ms and 12 KB (benchmarks/overlay_encoding.py), for each module of every request
            entry["overlay"] = render.data_uri(render.overlay(backdrop, values, display.colormap, display.alpha), "JPEG")
        if masks:
            entry["mask"] = values.round(6).tolist()
        attention.append(entry)
    t3 = time.perf_counter()
    return {
        "model": result.model, "weights": result.weights,
        "predictions": [p.__dict__ for p in result.top(top_k)],
        **result.ood_fields(),
        "attention": attention,
        "timing_ms": {"decode": _ms(t1 - t0), **result.timing_ms, "render": _ms(t3 - t2), "total": _ms(t3 - started)},
    }


# the maps the page draws without asking again: every reduction but one channel, which it asks for
PAGE_REDUCTIONS = tuple(r for r in render.REDUCTIONS if r != "channel")
VARIED_CHANNELS = 8  # the "look inside" view's small multiples
HISTOGRAM_BINS = 50


def _quantized(values: np.ndarray) -> dict:
    data, lo, hi = render.quantize(values)
    return {"data": data, "lo": lo, "hi": hi}


def _channels(mask: np.ndarray, index: list[int]) -> dict:
    return {"index": index, **_quantized(mask[index])}


def explain(explain: Explain, image: bytes, content_type: str, *, max_pixels: int, display_size: int,
            started: float, channel: int | None = None, all_channels: bool = False) -> dict:
    """What the page draws at once: all probabilities, pictures and, per module, each reduction as one
    quantised (h, w) map, the look-inside view's data (most varied channels, histogram, trunk
    magnitude) and, with ``channel``, that channel of every module that has it; ``all_channels``
    adds the whole (C, h, w) mask."""
    t0 = time.perf_counter()
    picture = decode_image(image, max_pixels, content_type)
    t1 = time.perf_counter()
    result = explain(picture)
    t2 = time.perf_counter()
    display = model_view(picture, result.model_input.width, display_size)
    thumbnail = picture.copy()
    thumbnail.thumbnail((640, 640))
    attention = []
    for a in result.attention:
        maps = {r: a.reduced(r) for r in PAGE_REDUCTIONS}
        mean = maps["mean"]
        # mean |T| over channels per position, before and after (1 + M): what the mask amplifies
        before = np.abs(a.trunk).mean(axis=0)
        after = np.abs((1 + a.mask) * a.trunk).mean(axis=0)
        entry = {
            **_module(a),
            "min": float(mean.min()), "max": float(mean.max()), "mean": float(mean.mean()),
            "reductions": {r: _quantized(values) for r, values in maps.items()},
            "varied": _channels(a.mask, render.most_varied(a.mask, VARIED_CHANNELS)),
            "histogram": render.histogram(a.mask, HISTOGRAM_BINS),
            "trunk_before": _quantized(before), "trunk_after": _quantized(after),
        }
        _with_channel(entry, a, channel)
        if all_channels:
            entry.update(_quantized(a.mask))
        attention.append(entry)
    images = {
        "uploaded": render.data_uri(thumbnail, "JPEG"),
        "display": render.data_uri(display, "JPEG"),
        "model_input": render.data_uri(result.model_input),
    }
    t3 = time.perf_counter()
    return {
        "model": result.model, "weights": result.weights,
        "image": {"width": picture.width, "height": picture.height},
        "images": images,
        "predictions": [p.__dict__ for p in result.predictions],
        **result.ood_fields(),
        "attention": attention,
        "timing_ms": {"decode": _ms(t1 - t0), **result.timing_ms, "render": _ms(t3 - t2),
                      "total": _ms(t3 - started)},
    }


def explain_channel(explain: Explain, image: bytes, content_type: str, *, max_pixels: int, channel: int,
                    started: float) -> dict:
    """Channel ``channel`` of every module that has it, and nothing else: what the page asks for when
    it shows one channel, a few kilobytes where /explain's whole answer is hundreds."""
    t0 = time.perf_counter()
    picture = decode_image(image, max_pixels, content_type)
    t1 = time.perf_counter()
    result = explain(picture)
    attention = [_with_channel(_module(a), a, channel) for a in result.attention]
    return {
        "model": result.model, "weights": result.weights, "channel": channel, "attention": attention,
        "timing_ms": {"decode": _ms(t1 - t0), **result.timing_ms, "total": _ms(time.perf_counter() - started)},
    }


def ablate(explainer: Explainer, picture: Image.Image, *, top_k: int) -> dict:
    """Predictions with attention on, all masks zeroed, and each module's mask zeroed alone."""
    return explainer.ablate(picture, top_k)

