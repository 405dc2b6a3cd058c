"""``ranlens serve --workers 2``: uvicorn's worker processes on the socket the caller bound (``--fd``)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from . import corpus
from .conftest import RANLENS, log_tail, stall_upload, stop_server


def worker_processes(pid: int) -> list[str]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    lines = [Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode() for c in children]
    return [line for line in lines if "multiprocessing.spawn" in line]  # not the resource tracker


def test_two_workers_share_the_socket_and_each_loads_the_models():
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
            with httpx.Client(base_url=url, timeout=60) as client:
                # /readyz answers from whichever worker accepts: ready means both have said so in the log
                while started < 2 and proc.poll() is None and time.time() < deadline:
                    time.sleep(1)
                    log.seek(0)
                    started = log.read().count(b"Application startup complete")
                assert started == 2, tail()
                assert len(worker_processes(proc.pid)) == 2
                image = corpus.png(corpus.photo("chelsea.jpg"))
                for _ in range(4):
                    assert client.get("/readyz").json()["status"] == "ready"
                    r = client.post("/api/v1/predict", params={"model": "attention92_cifar"},
                                    files={"file": ("cat.png", image, "image/png")})
                    assert r.status_code == 200, r.text
                    assert r.json()["predictions"][0]["label"] == "cat" and len(r.json()["attention"]) == 6
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
