from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PHOTOS = SHARED / "photos"
CIFAR_TARBALL = SHARED / "cifar10" / "cifar10-jpeg.tar.gz"

torch.set_num_threads(int(os.environ.get("RANLENS_TEST_THREADS", "2")))


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
