"""A real ``ranlens serve`` for the benchmarks: launched on a loopback socket bound here (``--fd``), from
an empty working directory, and stopped when the block ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Served:
    url: str  # base URL, ending in /
    pid: int
    ready_s: float  # from launch until /readyz answered


@contextmanager
def launched(timeout_s: float = 120, **env: str) -> Iterator[Served]:
    """``env``: RANLENS_* settings on top of this process's environment."""
    with socket.socket() as sock, tempfile.TemporaryDirectory() as cwd:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ranlens", "serve", "--fd", str(sock.fileno())], cwd=cwd,
                                env={**os.environ, **env}, pass_fds=[sock.fileno()],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(url + "readyz", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - started > timeout_s:
                        raise RuntimeError(f"ranlens serve did not get ready (exit code {proc.poll()})") from None
                    time.sleep(0.05)
            yield Served(url, proc.pid, time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_traced(url: str, timeout_s: float = 120) -> None:
    """Until every model of the server at ``url`` runs its traced forward (made just after the start)."""
    import json

    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        with urllib.request.urlopen(url + "api/v1/models", timeout=10) as r:
            if all(m["traced"] for m in json.load(r)["models"]):
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not trace its models in {timeout_s:.0f} s")
