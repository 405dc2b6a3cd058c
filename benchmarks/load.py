"""Throughput and latency of POST /api/v1/predict under concurrent clients, against the bare model.

    python benchmarks/load.py --clients 16 --seconds 30

In one run on one machine: (a) the bare model's batched throughput (the same preprocessing, then
forwards of ``--clients`` pictures, traced as the server's; the better of one forward at a time on
every core and one one-thread forward per core at once; and, the reference the issue was measured
against, the untraced model one forward at a time); (b) a real ``ranlens serve`` with its
defaults (dynamic batching, traced forwards, auto threads) and (c) the server as it was before
batching (``RANLENS_MAX_BATCH_SIZE=1``, two requests at once, one two-thread Python forward at a time),
each under ``--clients`` clients posting a photo for ``--seconds``, then one client alone. Prints
img/s, p50/p99 latency, errors, the CPU time per request of the server and of the clients (this
process), and the ratios the issue sets goals on: (b)/(a) throughput, (b)/(c) p99 and single-client
latency. With clients and server on the same cores, the bare model's CPU per picture over the server's
and the clients' CPU per request bounds (b)/(a); the script prints that bound too.

    python benchmarks/load.py --url http://127.0.0.1:8000/ --clients 16 --seconds 20

measures only a server that is already running (``ranlens serve --workers N``, ``ranlens serve-ray``):
the same clients, then one client alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import torch

from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.model.weights import DEFAULT_WEIGHTS

from _server import launched, wait_traced  # noqa: E402 - beside this script

WEIGHTS = DEFAULT_WEIGHTS["attention56_cifar"]  # the network measured, bare and served alike

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "static" / "examples" / "chelsea.jpg"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare(batch: int, seconds: float, data: bytes, threads: int, workers: int,
         traced: bool = True) -> tuple[float, float]:
    """(img/s, CPU seconds per picture) of ``workers`` threads each running batches of ``batch``
    pictures, ``threads`` torch threads each."""
    torch.set_num_threads(threads)
    explainer = Explainer.load("attention56_cifar", WEIGHTS)
    if traced:
        explainer.trace()
    pictures = [decode_image(data, 40_000_000) for _ in range(batch)]

    for _ in range(2):  # a traced forward settles (profiles, then optimises) over its first calls
        explainer.explain_batch(pictures)

    def worker() -> int:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            explainer.explain_batch(pictures)
            done += batch
        return done

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(lambda _: worker(), range(workers)))
    return done / (time.perf_counter() - started), (time.process_time() - cpu) / done


class Connection:
    """One keep-alive HTTP/1.1 connection that posts the same prepared multipart body again and again.

    The clients share the machine with the server (2 cores here), so the load generator has to cost
    little: a prebuilt request and a minimal response reader instead of an HTTP client library, whose
    per-request CPU otherwise went missing from the server's share (the script prints the clients'
    CPU per request).
    """

    def __init__(self, url: str, data: bytes) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        boundary = "ranlensloadboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chelsea.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        head = (f"POST {parts.path.rstrip('/')}/api/v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.request = head.encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        """The status of one POST; reconnects when the server closed the connection."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected from /api/v1/predict")
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(url: str, clients: int, seconds: float, data: bytes) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal errors
        connection = Connection(url, data)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                ok = await connection.post() == 200
            except (OSError, asyncio.IncompleteReadError, ValueError, RuntimeError):
                connection.close()
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


def single(url: str, repeats: int, data: bytes) -> float:
    with httpx.Client(timeout=60) as client:
        times = []
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            client.post(url + "api/v1/predict", files={"file": ("chelsea.jpg", data, "image/jpeg")}).raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


class Result(NamedTuple):
    rate: float  # img/s
    p50: float  # seconds
    p99: float
    errors: int
    alone: float  # one client alone, median seconds
    server_ms: float  # CPU per request
    client_ms: float


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--single", type=int, default=30, help="requests of the lone client")
    parser.add_argument("--url", help="measure only this running server (its base URL) instead")
    args = parser.parse_args()
    data = PHOTO.read_bytes()
    if args.url:
        url = args.url.rstrip("/") + "/"
        single(url, 3, data)  # warm
        client_cpu = time.process_time()
        latencies, errors, wall = asyncio.run(load(url, args.clients, args.seconds, data))
        client_ms = 1000 * (time.process_time() - client_cpu) / max(1, len(latencies) + errors)
        alone = single(url, args.single, data)
        print(f"{url}: {args.clients} clients {len(latencies) / wall:6.1f} img/s, p50 {1000 * pct(latencies, 0.5):.0f} "
              f"ms, p99 {1000 * pct(latencies, 0.99):.0f} ms, {errors} errors; one client alone: median "
              f"{1000 * alone:.1f} ms; client CPU {client_ms:.1f} ms per request")
        return
    cores = len(os.sched_getaffinity(0))
    rates = {}
    for threads, workers in ((cores, 1), (1, cores)):
        rates[threads, workers] = bare(args.clients, min(args.seconds, 15), data, threads, workers)
        print(f"bare model, batch {args.clients}, {workers} forward(s) at once of {threads} thread(s): "
              f"{rates[threads, workers][0]:.1f} img/s, CPU {1000 * rates[threads, workers][1]:.1f} ms per picture",
              flush=True)
    rate_bare, bare_cpu = max(rates.values())
    # the reference the issue measured against: the Python forward, one batch at a time on every core
    rate_python, _ = bare(args.clients, min(args.seconds, 15), data, cores, 1, traced=False)
    print(f"bare model, batch {args.clients}, untraced, 1 forward at once of {cores} thread(s): "
          f"{rate_python:.1f} img/s", flush=True)
    results = {}
    before = {"RANLENS_MAX_BATCH_SIZE": "1", "RANLENS_MAX_CONCURRENT_INFERENCES": "2", "RANLENS_TRACE": "false",
              "RANLENS_INFERENCE_WORKERS": "1", "RANLENS_TORCH_THREADS": str(cores)}
    for name, env in (("server", {}), ("before", before)):
        # the bare model's weights alone: the server's default would otherwise be the best top-1 (Attention-92)
        with launched(RANLENS_WEIGHTS=WEIGHTS, **env) as served:
            url = served.url
            if env.get("RANLENS_TRACE") != "false":
                wait_traced(url)  # the server traces its forward just after the start, as bare() does first
            single(url, 3, data)  # warm
            cpu, client_cpu = cpu_seconds(served.pid), time.process_time()
            latencies, errors, wall = asyncio.run(load(url, args.clients, args.seconds, data))
            requests = max(1, len(latencies) + errors)
            cpu_ms = 1000 * (cpu_seconds(served.pid) - cpu) / requests
            client_ms = 1000 * (time.process_time() - client_cpu) / requests
            alone = single(url, args.single, data)
        rate = len(latencies) / wall
        results[name] = r = Result(rate, pct(latencies, 0.5), pct(latencies, 0.99), errors, alone, cpu_ms, client_ms)
        print(f"{name:>12}: {args.clients} clients {rate:6.1f} img/s ({rate / rate_bare:.2f}x bare), "
              f"p50 {1000 * r.p50:.0f} ms, p99 {1000 * r.p99:.0f} ms, {errors} errors; "
              f"one client alone: median {1000 * alone:.1f} ms; CPU per request: server {cpu_ms:.1f} ms, "
              f"clients {client_ms:.1f} ms", flush=True)
    on, off = results["server"], results["before"]
    print(f"server / bare throughput: {on.rate / rate_bare:.2f}x (goal >= 0.85), errors {on.errors}")
    # every core busy: img/s is at most cores / CPU per picture, for the bare loop and the server alike
    print(f"CPU per picture: bare {1000 * bare_cpu:.1f} ms; server {on.server_ms:.1f} ms + clients {on.client_ms:.1f} ms "
          f"= {on.server_ms + on.client_ms:.1f} ms, so on shared cores server / bare is at most about "
          f"{1000 * bare_cpu / (on.server_ms + on.client_ms):.2f}x")
    print(f"server / untraced bare, one forward at a time (the issue's reference): {on.rate / rate_python:.2f}x")
    print(f"p99 server / before: {on.p99 / off.p99:.2f}x (goal <= 1)")
    print(f"single client server / before: {on.alone / off.alone:.2f}x (goal <= 1.1)")


if __name__ == "__main__":
    main()
