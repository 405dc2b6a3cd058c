"""The ranlens command line, run for real in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
from PIL import Image

from .conftest import PHOTOS, ROOT, running_server


def ranlens(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ranlens", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_explain_writes_overlays_masks_and_manifest(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = ranlens("explain", str(PHOTOS / "chelsea.jpg"), str(PHOTOS / "rocket.jpg"), str(bad),
                     "--out", str(tmp_path / "out"), "--colormap", "inferno")
    assert result.returncode == 1, result.stderr  # one image failed, and says so
    assert "skipped" in result.stdout + result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"] == "attention56_cifar"
    assert "error" in manifest["images"][str(bad)]
    entry = manifest["images"][str(PHOTOS / "chelsea.jpg")]
    assert [m["module"] for m in entry["attention"]] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    for m in entry["attention"]:
        mask = np.load(tmp_path / "out" / m["mask"])
        assert mask.shape == (m["channels"], *m["shape"]) and 0 < mask.min() and mask.max() < 1
        assert abs(float(mask.mean(0).max()) - m["max"]) < 1e-6
        assert Image.open(tmp_path / "out" / m["overlay"]).size == (256, 256)
    assert len(entry["predictions"]) == 5


def test_figure_command(tmp_path):
    result = ranlens("figure", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "fig.png"))
    assert result.returncode == 0, result.stderr
    assert "stage3.module1" in result.stdout
    assert Image.open(tmp_path / "fig.png").size[0] > 500


def test_help_lists_every_command():
    out = ranlens("--help").stdout
    for command in ("train", "evaluate", "export", "explain", "figure", "curves", "serve"):
        assert command in out


def test_serve_behind_a_path_prefix():
    with running_server([sys.executable, "-m", "ranlens", "serve"], RANLENS_ROOT_PATH="/ranlens") as url:
        def get(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(url + path, timeout=30) as r:
                return r.status, r.read()

        # as from a proxy that strips the prefix: routes answer, and links the browser follows carry it
        assert get("readyz")[0] == 200
        assert get("static/js/main.js")[0] == 200
        assert json.loads(get("openapi.json")[1])["servers"] == [{"url": "/ranlens"}]
        assert b"/ranlens/openapi.json" in get("docs")[1]
        assert b'src="static/js/main.js"' in get("")[1]
