from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# everything the tests read is in the repository: a clone with nothing beside it passes
PHOTOS = ROOT / "static" / "examples"
CIFAR_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar10-test"

torch.set_num_threads(int(os.environ.get("RANLENS_TEST_THREADS", "2")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(command: list[str], **env: str) -> Iterator[str]:
    """Run ``command --port N`` on a free port until ``/readyz`` answers 200; yield its base URL."""
    port = _free_port()
    # a file, not a pipe: nobody reads the server's log while it runs, and a full pipe would block it
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            ready, deadline = False, time.time() + 120
            while not ready and proc.poll() is None and time.time() < deadline:
                try:
                    with urllib.request.urlopen(url + "readyz", timeout=2) as r:
                        ready = r.status == 200
                except OSError:
                    time.sleep(0.5)
            if not ready:
                proc.kill()
                proc.wait(timeout=10)
                log.seek(0)
                pytest.fail("server did not become ready: " + log.read().decode(errors="replace")[-2000:])
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cifar_test_images() -> dict[str, list[Path]]:
    """Three committed CIFAR-10 test images per class (tests/fixtures/README.md)."""
    found = {d.name: sorted(d.glob("*.jpg")) for d in sorted(CIFAR_FIXTURES.iterdir()) if d.is_dir()}
    assert len(found) == 10 and all(len(v) == 3 for v in found.values()), "tests/fixtures/cifar10-test is incomplete"
    return found
