from __future__ import annotations

import os
import socket
import subprocess
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(command: list[str], port: int, ready_path: str = "readyz", **env: str) -> Iterator[str]:
    """Start a real server process, wait until ``ready_path`` answers 200, yield its base URL."""
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            proc.kill()
        if proc.poll() is not None:
            pytest.fail("server did not become ready: " + proc.stdout.read().decode(errors="replace")[-2000:])
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
