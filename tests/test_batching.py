"""Dynamic batching: requests that arrive together share one forward, and each gets its own answer."""

from __future__ import annotations

import asyncio
import os
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from ranlens.app.core.config import Settings
from ranlens.model.batching import Batcher
from ranlens.model.explainer import Explainer
from ranlens.model.weights import DEFAULT_WEIGHTS

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


@pytest.mark.parametrize("concurrency", [1, 2])
def test_each_caller_gets_its_own_result_from_a_shared_forward(explainer, concurrency):
    images = pictures(12)
    sizes: list[int] = []
    batcher = Batcher(explainer, max_batch=8, window_s=0.5, on_batch=lambda n, s: sizes.append(n),
                      concurrency=concurrency)

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
    modules = explainer.model.module_names
    assert len(modules) == 3  # Attention-56: the masks compared below are there to compare
    for got, want in zip(batched, alone, strict=True):
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
        assert [a.module for a in got.attention] == [a.module for a in want.attention] == modules
        for a, b in zip(got.attention, want.attention, strict=True):
            np.testing.assert_allclose(a.mask, b.mask, atol=1e-5)
        assert got.ood_score == pytest.approx(want.ood_score, abs=1e-4)


def test_with_two_slots_two_forwards_run_at_once(explainer):
    # the first two forwards each wait until the other has started: with one slot the second never
    # starts while the first waits, the barrier breaks and the callers get its error
    barrier = threading.Barrier(2, timeout=20)
    started = itertools.count()
    pool = ThreadPoolExecutor(2)

    def meet_then(fn, *args):
        if next(started) < 2:
            barrier.wait()
        return fn(*args)

    batcher = Batcher(explainer, max_batch=1, window_s=0.0, concurrency=2,
                      submit=lambda fn, *args: pool.submit(meet_then, fn, *args))
    images = pictures(4)
    try:
        with ThreadPoolExecutor(4) as callers:
            results = list(callers.map(batcher.explain, images))
    finally:
        batcher.close()
        pool.shutdown()
    assert not barrier.broken
    for got, image in zip(results, images, strict=True):
        np.testing.assert_allclose(got.probabilities, explainer.explain(image).probabilities, atol=1e-5)


def test_a_lone_request_does_not_wait_for_the_window(explainer):
    """Nobody else is preparing, so the picture runs at once. The window is a minute and the answer
    is wanted within half of it: a batcher that waited for the window fails, and one forward of a
    small picture (milliseconds) cannot take that long however loaded the machine."""
    window_s = 60.0
    batcher = Batcher(explainer, max_batch=8, window_s=window_s)
    try:
        with ThreadPoolExecutor(1) as caller:
            answer = caller.submit(batcher.explain, pictures(1)[0])
            assert answer.result(timeout=window_s / 2).predictions  # TimeoutError: it waited
    finally:
        batcher.close()


class ForwardFailed(RuntimeError):
    """What the broken forward below raises: the callers must get this one, not any exception."""


def test_a_failed_forward_reaches_every_caller_and_the_batcher_goes_on(explainer):
    """The forward of a batch of three fails: each of its three callers gets that forward's error; the
    next batch, and a lone picture after it, are answered as if nothing had happened."""
    forwards: list[int] = []  # pictures per forward started, in order
    pool = ThreadPoolExecutor(1)
    broken = ForwardFailed("the forward broke")

    def first_forward_fails(fn, *args):
        images = args[0]
        forwards.append(len(images))

        def run():
            if len(forwards) == 1:
                raise broken
            return fn(*args)

        return pool.submit(run)

    # a long window, and a batch closes when full: three callers always make one batch of three
    batcher = Batcher(explainer, max_batch=3, window_s=60.0, submit=first_forward_fails)

    def three_at_once(images):
        # a fourth caller announced and withdrawn after the others: while it is open, no caller is
        # alone (each queues for the batch thread) and the batch waits until it holds all three
        with batcher.ticket(), ThreadPoolExecutor(3) as callers:
            return [callers.submit(batcher.explain, image) for image in images]

    images = pictures(4)
    try:
        failed = three_at_once(images[:3])
        for call in failed:
            with pytest.raises(ForwardFailed) as caught:
                call.result(timeout=120)
            assert caught.value is broken
        assert forwards == [3]
        answered = [call.result(timeout=120) for call in three_at_once(images[:3])]
        lone = batcher.explain(images[3])
    finally:
        batcher.close()
        pool.shutdown()
    assert forwards == [3, 3, 1]
    for got, image in zip([*answered, lone], images, strict=True):
        np.testing.assert_allclose(got.probabilities, explainer.explain(image).probabilities, atol=1e-5)


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
    for got, want in zip(together, alone, strict=True):
        assert got.keys() == want.keys()
        for label in want:
            assert got[label] == pytest.approx(want[label], abs=1e-4)
    forwards = sample(metrics, "ranlens_inference_batch_size_count")
    singles = sample(metrics, "ranlens_inference_batch_size_bucket", le="1.0")
    assert forwards is not None and forwards < 16, metrics  # 8 alone + fewer than 8 for the burst
    assert singles is not None and singles < forwards  # at least one forward took several pictures


@pytest.mark.parametrize("arch", sorted(DEFAULT_WEIGHTS))
def test_a_traced_forward_gives_the_python_forwards_answers(arch):
    explainer = Explainer.load(arch, "DEFAULT")
    images = pictures(3)
    want = explainer.explain_batch(images)
    x = torch.stack([explainer.prepare(image)[1] for image in images])
    want_raw = explainer.infer(x, masks=True)
    assert not explainer.traced and explainer.trace() and explainer.traced
    got = explainer.explain_batch(images)
    assert explainer.model.module_names  # masks to compare
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.probabilities, w.probabilities, atol=1e-5)
        assert [a.module for a in g.attention] == [a.module for a in w.attention] == explainer.model.module_names
        for a, b in zip(g.attention, w.attention, strict=True):
            np.testing.assert_allclose(a.mask, b.mask, atol=1e-5)
            np.testing.assert_allclose(a.trunk, b.trunk, atol=1e-4)
    got_raw = explainer.infer(x, masks=True)
    assert got_raw.keys() == want_raw.keys()
    for key in want_raw:
        np.testing.assert_allclose(got_raw[key], want_raw[key], atol=1e-5)
    # ablations stay on the Python forward: zeroing a module's mask still changes the answer
    off = explainer.explain_batch(images[:1], masks_off=True)[0]
    assert not np.allclose(off.probabilities, got[0].probabilities, atol=1e-4)


def test_a_failed_trace_keeps_the_python_forward(explainer, monkeypatch, caplog):
    fresh = Explainer(explainer.model, explainer.weights)

    def refuse(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    assert fresh.trace() is False and not fresh.traced
    assert "no TorchScript here" in caplog.text
    assert fresh.explain(pictures(1)[0]).predictions


def test_auto_forward_threads_fit_the_cores():
    cores = len(os.sched_getaffinity(0))
    workers, threads = Settings().forward_threads()
    assert workers == min(2, cores) and threads == max(1, cores // workers)
    assert Settings(inference_workers=3, torch_threads=1).forward_threads() == (3, 1)
    assert Settings(inference_workers=1).forward_threads() == (1, cores)


@pytest.mark.parametrize(("cores", "threads", "expected"), [(2, 2, (1, 2)), (2, 1, (2, 1)), (8, 2, (2, 2)),
                                                            (2, 4, (1, 4)), (16, 4, (2, 4))])
def test_torch_threads_set_alone_get_the_workers_that_fit_the_cores(cores, threads, expected):
    """Two workers of two threads on two cores ran even a lone forward at half speed (two OpenMP teams)."""
    assert Settings(torch_threads=threads).forward_threads(cores=cores) == expected
