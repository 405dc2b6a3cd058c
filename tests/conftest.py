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
SHARED = ROOT.parent / "shared" / "data"
PHOTOS = SHARED / "photos"
CIFAR_TARBALL = SHARED / "cifar10" / "cifar10-jpeg.tar.gz"

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
def cifar_test_images(tmp_path_factory) -> dict[str, list[Path]]:
    """A few CIFAR-10 test images per class, extracted from the shared tarball."""
    import tarfile

    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"{CIFAR_TARBALL} not found")
    out = tmp_path_factory.mktemp("cifar")
    wanted = {f"{k:04d}.jpg" for k in range(5)}
    found: dict[str, list[Path]] = {}
    with tarfile.open(CIFAR_TARBALL) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) == 4 and parts[1] == "test" and parts[3] in wanted:
                tar.extract(member, out, filter="data")
                found.setdefault(parts[2], []).append(out / member.name)
    return {k: sorted(v) for k, v in found.items()}
