"""Dynamic batching: requests that arrive together share one forward, and each gets its own answer."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from ranlens.model.batching import Batcher
from ranlens.model.explainer import Explainer

from . import corpus
from .live import live_server
from .test_serving import sample


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    base = np.asarray(corpus.photo().resize((48, 48)), dtype=np.int16)
    # the same photo under different noise: similar enough to be plausible, different answers
    return [Image.fromarray(np.clip(base + rng.integers(-60, 60, base.shape), 0, 255).astype(np.uint8))
            for _ in range(n)]


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer.load("attention56_cifar", "DEFAULT")


def test_each_caller_gets_its_own_result_from_a_shared_forward(explainer):
    images = pictures(12)
    sizes: list[int] = []
    batcher = Batcher(explainer, max_batch=8, window_s=0.5, on_batch=lambda n, s: sizes.append(n))

    def call(image):
        with batcher.ticket() as ticket:
            return ticket.explain(image)

    try:
        with ThreadPoolExecutor(12) as pool:
            batched = list(pool.map(call, images))
    finally:
        batcher.close()
    alone = [explainer.explain(image) for image in images]
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 8, sizes
    for got, want in zip(batched, alone):
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
        for a, b in zip(got.attention, want.attention):
            np.testing.assert_allclose(a.mask, b.mask, atol=1e-5)
        assert got.ood_score == pytest.approx(want.ood_score, abs=1e-4)


def test_a_lone_request_does_not_wait_for_the_window(explainer):
    batcher = Batcher(explainer, max_batch=8, window_s=2.0)
    try:
        batcher.explain(pictures(1)[0])  # warm
        started = time.perf_counter()
        batcher.explain(pictures(1)[0])
        assert time.perf_counter() - started < 1.0  # nobody else is preparing: it runs at once
    finally:
        batcher.close()


def test_a_failed_forward_reaches_every_caller_and_the_batcher_goes_on(explainer):
    batcher = Batcher(explainer, max_batch=4, window_s=0.0)
    try:
        with pytest.raises(Exception):
            batcher.explain(Image.new("RGB", (0, 0)))
        assert batcher.explain(pictures(1)[0]).predictions
    finally:
        batcher.close()


def test_concurrent_http_requests_are_batched_and_answered_each_their_own():
    images = [corpus.png(p) for p in pictures(8)]
    with live_server(RANLENS_BATCH_WINDOW_MS="200") as url:
        alone = []
        with httpx.Client(timeout=120) as client:
            for data in images:
                body = client.post(url + "api/v1/predict", params={"top_k": 10},
                                   files={"file": ("x.png", data, "image/png")}).json()
                alone.append({p["label"]: p["probability"] for p in body["predictions"]})

        async def burst() -> list[dict]:
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(data: bytes) -> dict:
                    r = await client.post(url + "api/v1/predict", params={"top_k": 10},
                                          files={"file": ("x.png", data, "image/png")})
                    assert r.status_code == 200, r.text
                    return {p["label"]: p["probability"] for p in r.json()["predictions"]}
                return list(await asyncio.gather(*(one(d) for d in images)))

        together = asyncio.run(burst())
        metrics = httpx.get(url + "metrics").text
    for got, want in zip(together, alone):
        assert got.keys() == want.keys()
        for label in want:
            assert got[label] == pytest.approx(want[label], abs=1e-4)
    forwards = sample(metrics, "ranlens_inference_batch_size_count")
    singles = sample(metrics, "ranlens_inference_batch_size_bucket", le="1.0")
    assert forwards is not None and forwards < 16, metrics  # 8 alone + fewer than 8 for the burst
    assert singles is not None and singles < forwards  # at least one forward took several pictures
