"""Serving under load: Prometheus metrics and backpressure (a bounded queue that answers 503 at once)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from ranlens.app.core.config import Settings
from ranlens.app.core.gate import Busy, InferenceGate
from ranlens.app.main import create_app
from ranlens.model.weights import DEFAULT_WEIGHTS

from . import corpus
from .live import live_server

A56, A92 = DEFAULT_WEIGHTS["attention56_cifar"], DEFAULT_WEIGHTS["attention92_cifar"]
PROBLEM = "application/problem+json"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus' text format, or None if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and found == labels:
            return float(value)
    return None


def test_metrics_count_requests_by_route_and_report_models_and_queue():
    with TestClient(create_app(Settings())) as c:
        image = corpus.png(corpus.photo())
        for model in ("attention56_cifar", "attention92_cifar"):
            assert c.post("/api/v1/predict", params={"model": model},
                          files={"file": ("c.png", image, "image/png")}).status_code == 200
        c.get("/api/v1/models/attention92_cifar")
        c.get("/api/v1/models/nothing")
        c.get("/no/such/page")
        c.head("/api/v1/models/attention92_cifar")  # a load balancer's health check, say
        for method in ("PROPFIND", "RND0", "RND1"):  # WebDAV's, and made-up ones uvicorn's h11 passes on
            assert c.request(method, "/api/v1/predict").status_code == 405
        assert c.post("/api/v1/ablate", params={"model": "attention56_cifar"},
                      files={"file": ("c.png", image, "image/png")}).status_code == 200
        response = c.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
    assert sample(text, "ranlens_http_requests_total", method="POST", route="/api/v1/predict", status="200") == 2
    # routes by template, not by raw path: the name a client sent is no label
    assert sample(text, "ranlens_http_requests_total", method="GET", route="/api/v1/models/{name}", status="200") == 1
    assert sample(text, "ranlens_http_requests_total", method="GET", route="/api/v1/models/{name}", status="404") == 1
    assert sample(text, "ranlens_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert "nothing" not in text and "/no/such/page" not in text
    # methods are the client's word too: those HTTP does not define share one label
    assert sample(text, "ranlens_http_requests_total", method="other", route="/api/v1/predict", status="405") == 3
    assert "RND0" not in text and "PROPFIND" not in text
    # HEAD is answered as GET; it is still counted under its route, not with scanners' unknown paths
    assert sample(text, "ranlens_http_requests_total", method="HEAD", route="/api/v1/models/{name}", status="200") == 1
    assert sample(text, "ranlens_http_request_duration_seconds_count", method="POST", route="/api/v1/predict") == 2
    assert sample(text, "ranlens_inference_batch_size_count") == 2
    for weights in (A56, A92):
        assert sample(text, "ranlens_inference_seconds_count", model=weights, kind="batch") == 1
    # an ablation is one unbatched call of several forwards: timed whole, and no batch of its own
    assert sample(text, "ranlens_inference_seconds_count", model=A56, kind="call") == 1
    assert sample(text, "ranlens_model_loaded", model="attention92_cifar", weights=A92) == 1
    assert sample(text, "ranlens_model_load_errors") == 0
    assert sample(text, "ranlens_inference_queue_depth") == 0 and sample(text, "ranlens_inferences_running") == 0


def test_gate_rejects_at_once_when_full_and_after_the_wait_limit():
    """Reasons are compared exactly; times only against bounds that load cannot break: a timeout
    never comes before its limit, and "at once" is seen as the queued request still waiting."""
    max_wait_s = 0.3

    async def scenario() -> list:
        gate = InferenceGate(concurrency=1, max_waiting=1, max_wait_s=max_wait_s)
        events: list = []
        release = asyncio.Event()

        async def hold() -> None:
            async with gate.slot():
                events.append("running")
                await release.wait()

        async def wait_for_slot() -> None:
            started = time.perf_counter()
            try:
                async with gate.slot():
                    events.append("served")
            except Busy as exc:
                # (reason, Retry-After, seconds waited, requests still queued when it was turned away)
                events.append((exc.reason, exc.retry_after, time.perf_counter() - started, gate.waiting))

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(wait_for_slot())
        await asyncio.sleep(0.01)
        await wait_for_slot()  # the queue holds one: this one is turned away at once
        await waiter  # and the waiting one gives up at the limit
        release.set()
        await holder
        await wait_for_slot()  # free again
        assert gate.waiting == 0 and gate.running == 0 and gate.rejected == 2
        return events

    events = asyncio.run(scenario())
    assert [e if isinstance(e, str) else e[:2] for e in events] == [
        "running", ("queue_full", 1), ("wait_timeout", 1), "served"], events
    (_, _, full_after, full_queued), (_, _, timeout_after, _) = events[1], events[2]
    # turned away at once: while the request ahead of it still waited (it gives up only at the limit)
    assert full_queued == 1, events
    # the waiting one gave up at the limit, not before it, and not long after (generous: a loaded machine)
    assert max_wait_s - 0.01 <= timeout_after < max_wait_s + 30, events
    assert full_after < timeout_after, events
    with pytest.raises(ValueError, match="concurrency"):
        InferenceGate(0, 1, 1.0)


def test_more_clients_than_the_bound_get_503_with_retry_after_and_the_server_stays_ready():
    """A live server with one inference slot and room for two waiting: every request of a burst of slow
    ones is answered, served or 503 with Retry-After (at least half 503: nobody queues beyond the
    bound), the metrics count each 503 by its reason, and /readyz answers throughout. How long the
    answers took is not checked: on two shared cores it says more about the machine than the gate
    (the gate test above checks the wait limit itself)."""
    wait_limit = 2.0
    big = corpus.png(corpus.photo().resize((1600, 1200)))  # decoding in the slot makes each request slow
    with live_server(RANLENS_MAX_CONCURRENT_INFERENCES="1", RANLENS_MAX_QUEUED_INFERENCES="2",
                     RANLENS_MAX_QUEUE_WAIT_S=str(wait_limit)) as url:
        def ablate(client: httpx.Client) -> httpx.Response:
            return client.post(url + "api/v1/ablate", params={"model": "attention92_cifar"},
                               files={"file": ("big.png", big, "image/png")})

        with httpx.Client(timeout=120) as client:
            assert ablate(client).status_code == 200

        async def burst(n: int) -> tuple[list[tuple[int, dict]], list[int]]:
            async with httpx.AsyncClient(timeout=120) as client:
                async def one() -> tuple[int, dict]:
                    r = await client.post(url + "api/v1/ablate", params={"model": "attention92_cifar"},
                                          files={"file": ("big.png", big, "image/png")})
                    body = r.json() if r.headers["content-type"].startswith(PROBLEM) else {}
                    return r.status_code, {**body, "retry": r.headers.get("retry-after")}

                async def ready_checks() -> list[int]:
                    codes = []
                    for _ in range(5):
                        await asyncio.sleep(0.2)
                        codes.append((await client.get(url + "readyz")).status_code)
                    return codes

                results, ready = await asyncio.gather(asyncio.gather(*(one() for _ in range(10))), ready_checks())
                return list(results), ready

        results, ready = asyncio.run(burst(10))
        metrics = httpx.get(url + "metrics").text
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 5, statuses
    for status, body in results:
        if status == 503:
            assert body["title"] == "Server busy" and body["retry"] and int(body["retry"]) >= 1, body
    assert ready == [200] * 5
    rejected = sum(sample(metrics, "ranlens_inference_rejected_total", reason=r) or 0
                   for r in ("queue_full", "wait_timeout"))
    assert rejected == statuses.count(503)
    # the one sent alone and the burst's served ones, and each 503 under its route
    for status, count in ((200, statuses.count(200) + 1), (503, statuses.count(503))):
        assert sample(metrics, "ranlens_http_requests_total", method="POST", route="/api/v1/ablate",
                      status=str(status)) == count, metrics


def test_the_server_traces_its_models_after_the_start_unless_told_not_to():
    image = corpus.png(corpus.photo())
    answers = {}
    for trace in (True, False):
        with TestClient(create_app(Settings(trace=trace))) as c:
            deadline = time.monotonic() + 120
            while True:  # the traces are made beside the first requests, on the torch threads
                traced = [m["traced"] for m in c.get("/api/v1/models").json()["models"]]
                if all(traced) or not trace or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert traced == [trace] * len(DEFAULT_WEIGHTS)
            body = c.post("/api/v1/predict", params={"model": "attention92_cifar", "top_k": 10},
                          files={"file": ("c.png", image, "image/png")}).json()
            answers[trace] = {p["label"]: p["probability"] for p in body["predictions"]}
    assert answers[True].keys() == answers[False].keys()
    for label, probability in answers[False].items():
        assert answers[True][label] == pytest.approx(probability, abs=1e-5)


@pytest.mark.parametrize("name", ["max_queue_wait_s", "shutdown_timeout_s", "batch_window_ms"])
def test_time_settings_must_be_finite(name):
    """inf passed gt=0, and then every 503 of a full queue was a 500 (its Retry-After is half the wait)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=name):
        Settings(_env_file=None, **{name: "inf"})
    assert getattr(Settings(_env_file=None, **{name: "1e6"}), name) == 1e6  # long, but a time


def test_unbatched_routes_decode_pictures_off_the_torch_threads(monkeypatch):
    """/ablate and /v2 run their model whole on a torch thread, which every model's forwards share:
    decoding there (hundreds of milliseconds for a large PNG) held up every other request's forward,
    as did /v2's answer (megabytes of masks as JSON). Both run in worker threads, as the batched
    routes do them. The real decoder and answer run; the spies only note the thread."""
    import base64
    import threading

    from ranlens.app.api.routes import teach, v2
    from ranlens.model.imaging import decode_image

    threads: list[str] = []

    def noting_thread(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return decode_image(*args, **kwargs)

    answer = v2._answer

    def answer_noting_thread(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return answer(*args, **kwargs)

    monkeypatch.setattr(teach, "decode_image", noting_thread)
    monkeypatch.setattr(v2, "decode_image", noting_thread)
    monkeypatch.setattr(v2, "_answer", answer_noting_thread)
    picture = corpus.encode(corpus.photo(), "JPEG")
    with TestClient(create_app(Settings())) as c:
        r = c.post("/api/v1/ablate", files={"file": ("a.jpg", picture, "image/jpeg")})
        assert r.status_code == 200, r.text
        body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "data": [base64.b64encode(picture).decode()]}]}
        r = c.post(f"/v2/models/{A56.split('.')[0]}/infer", json=body)
        assert r.status_code == 200, r.text
    # /ablate's decoding, /v2's decoding and /v2's answer
    assert len(threads) == 3 and not any(name.startswith("torch") for name in threads), threads
