"""A real ranlens server in a uvicorn subprocess, for tests that need real HTTP."""

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
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def live_server(**env: str) -> Iterator[str]:
    """Serve ``ranlens.app.main:app`` until ``/readyz`` answers 200; yield its base URL.

    The test binds and listens on the socket and hands it to uvicorn (``--fd``): no window between
    picking a free port and binding it in which another process could take it, and connections made
    before uvicorn is up wait in the listen backlog instead of being refused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    # a file, not a pipe: nobody reads the log while the server runs, and a full pipe would block it
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "ranlens.app.main:app", "--fd", str(sock.fileno())],
                pass_fds=[sock.fileno()], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "RANLENS_TORCH_THREADS": os.environ.get("RANLENS_TEST_THREADS", "1"), **env},
            )
        finally:
            sock.close()  # the server holds its own copy
        url = f"http://127.0.0.1:{port}/"
        try:
            ready, deadline = False, time.monotonic() + 120
            while not ready and proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url + "readyz", timeout=5) as r:
                        ready = r.status == 200
                except OSError:
                    time.sleep(0.3)
            if not ready:
                proc.kill()
                proc.wait(timeout=10)
                log.seek(0)
                pytest.fail("server did not become ready: " + log.read().decode(errors="replace")[-2000:])
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
