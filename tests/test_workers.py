"""``ranlens serve --workers 2``: uvicorn's worker processes on the socket the caller bound (``--fd``)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ranlens.model.weights import DEFAULT_WEIGHTS

from . import corpus
from .conftest import RANLENS, log_tail, stall_upload, stop_server
from .test_serving import sample


def worker_processes(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    cmdlines = {int(c): Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode() for c in children}
    return sorted(c for c, line in cmdlines.items() if "multiprocessing.spawn" in line)  # not the resource tracker


def _hex_address(port: int) -> str:
    return f"0100007F:{port:04X}"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian address, port in hex)


def serving_process(server_port: int, client_port: int, candidates: list[int]) -> int:
    """Which of ``candidates`` holds the server's end of the connection from ``client_port``: the
    worker that accepted it (the supervisor and this test hold only the listening socket)."""
    inodes = [fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
              if (fields[1], fields[2]) == (_hex_address(server_port), _hex_address(client_port))]
    assert len(inodes) == 1 and inodes[0] != "0", inodes  # accepted: a socket some process holds
    owners = []
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inodes[0]}]":
                    owners.append(pid)
                    break
            except FileNotFoundError:  # an fd closed while we looked
                continue
    assert len(owners) == 1, (owners, candidates)
    return owners[0]


def test_two_workers_share_the_socket_and_each_loads_the_models():
    """Both worker processes answer requests, and each has loaded every model: each logs which
    models it serves, and each is asked itself. Requests go on
    fresh connections until each worker has accepted one (seen in /proc: which process holds the
    server's end), and on that connection the worker answers a prediction, /readyz (ready only when
    every configured model loaded) and its own /metrics (each worker has its own registry)."""
    with socket.socket() as sock, tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryFile() as log, \
            socket.socket() as stalled:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        proc = subprocess.Popen([RANLENS, "serve", "--workers", "2", "--fd", str(sock.fileno())], cwd=cwd,
                                env={**os.environ, "RANLENS_TORCH_THREADS": "1", "RANLENS_SHUTDOWN_TIMEOUT_S": "2"}, stdout=log,
                                stderr=subprocess.STDOUT, pass_fds=[sock.fileno()])

        def tail() -> str:
            return log_tail(log)

        try:
            deadline, started = time.time() + 180, 0
            # the lifespans have run (models loaded, or failed to) in both workers
            while started < 2 and proc.poll() is None and time.time() < deadline:
                time.sleep(1)
                log.seek(0)
                started = log.read().count(b"Application startup complete")
            assert started == 2, tail()
            log.seek(0)
            # the app's own INFO line, once per worker (uvicorn's logging alone dropped it)
            assert log.read().count(b"INFO:     serving attention") == 2, tail()
            workers = worker_processes(proc.pid)
            assert len(workers) == 2, workers
            image = corpus.png(corpus.photo("chelsea.jpg"))
            server_port = sock.getsockname()[1]

            def ask_a_worker() -> int:
                """One fresh connection: a prediction, then /readyz and /metrics from the same worker."""
                with httpx.Client(base_url=url, timeout=60) as client:
                    r = client.post("/api/v1/predict", params={"model": "attention92_cifar"},
                                    files={"file": ("cat.png", image, "image/png")})
                    assert r.status_code == 200, r.text
                    assert r.json()["predictions"][0]["label"] == "cat" and len(r.json()["attention"]) == 6
                    client_port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
                    worker = serving_process(server_port, client_port, workers)
                    ready = client.get("/readyz")
                    metrics = client.get("/metrics")
                    for answer in (ready, metrics):  # still the same connection, so the same worker
                        assert answer.extensions["network_stream"].get_extra_info("client_addr")[1] == client_port
                assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
                for arch, weights in DEFAULT_WEIGHTS.items():
                    assert sample(metrics.text, "ranlens_model_loaded", model=arch, weights=weights) == 1, metrics.text
                assert sample(metrics.text, "ranlens_model_load_errors") == 0, metrics.text
                return worker

            # the kernel hands each connection to whichever worker accepts first: two at a time, so one
            # busy with a request leaves the next to the other, until both have been seen
            answered: set[int] = set()
            with ThreadPoolExecutor(2) as pool:
                while answered != set(workers) and time.time() < deadline + 120:
                    answered.update(pool.map(lambda _: ask_a_worker(), range(2)))
            assert answered == set(workers), (answered, workers, tail())
            # a client gone quiet mid-upload holds a worker's shutdown for at most the timeout
            stall_upload(stalled, url)
        finally:
            stop_server(proc, tail, timeout=30)


def test_connections_workers_accept_send_at_once():
    """The workers open the listening socket as uvicorn does, as a Unix socket, so asyncio leaves
    Nagle's algorithm on for what they accept (a response's body then waits for the client's delayed
    ACK); the listener ``serve --workers`` hands over has TCP_NODELAY, which accepted sockets inherit."""
    from ranlens.cli import _listen, _without_nagle

    def accepted_nodelay(fix: bool) -> int:
        with _listen("127.0.0.1", 0) as listener:
            if fix:
                _without_nagle(listener)
            listener.listen()
            with socket.fromfd(listener.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as as_uvicorn, \
                    socket.create_connection(listener.getsockname()[:2]):
                accepted, _ = as_uvicorn.accept()
                with accepted:
                    return accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    assert accepted_nodelay(fix=False) == 0  # what the workers got before
    assert accepted_nodelay(fix=True) != 0
