"""The package as a user gets it: a wheel built from this tree, installed (not editable) into a fresh
virtual environment, served by its own ``ranlens serve`` from a directory outside the repository.

The editable install the other tests run against reads every file straight from the repository, so a
file missing from the package data, or code that finds files relative to the repository, passes there
and breaks only for users. This test sees what they see.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from ranlens.model.weights import DEFAULT_WEIGHTS, get_weights

from .conftest import PHOTOS, ROOT, running_server

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST_INFO = f"{PROJECT['name']}-{PROJECT['version']}.dist-info"
# source folder -> where its files land in the wheel (the package-dir mapping in pyproject.toml)
PACKAGE_DATA_DIRS = {"static": "ranlens/static", "templates": "ranlens/templates", "model/weights": "ranlens/model/weights"}
# what never belongs to a source tree handed to the build (caches, virtual environments, build output)
JUNK = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                              ".pytest_cache", "node_modules")


def source_files() -> list[str]:
    """The repository's files as a clone would have them: tracked plus untracked-but-not-ignored."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git checkout (an unpacked archive): copy the tree minus JUNK instead
    return sorted(f for f in listed if f and (ROOT / f).is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: setuptools reuses build/ inside the source tree, and a file left there by an
    # earlier build would land in the wheel even after it left the repository.
    src = tmp_path_factory.mktemp("source") / "ranlens"
    files = source_files()
    if files:
        for name in files:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    else:
        shutil.copytree(ROOT, src, ignore=JUNK)
    out = tmp_path_factory.mktemp("wheel")
    # no isolation: the test environment has the build backend (setuptools, from the test extra), and
    # the test needs no network
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(out), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}\n{built.stderr}"
    (path,) = out.glob("*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def test_wheel_holds_only_the_package(wheel_names):
    assert {n.split("/")[0] for n in wheel_names} == {"ranlens", DIST_INFO}, sorted(wheel_names)[:50]
    assert not [n for n in wheel_names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_holds_the_page_and_the_weights(wheel, wheel_names):
    assert "ranlens/templates/index.html" in wheel_names
    assert "ranlens/static/style.css" in wheel_names
    assert [n for n in wheel_names if re.fullmatch(r"ranlens/static/(js/)?[^/]+\.js", n)], "no JavaScript"
    weights = {PurePosixPath(n).name for n in wheel_names if n.startswith("ranlens/model/weights/")}
    for name in DEFAULT_WEIGHTS.values():
        assert {f"{name}.safetensors", f"{name}.json"} <= weights, (name, weights)
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert re.search(r"^ranlens\s*=\s*ranlens\.cli:main$", entry_points, re.M), entry_points


@pytest.mark.parametrize("folder", sorted(PACKAGE_DATA_DIRS))
def test_every_data_file_of_the_repository_is_in_the_wheel(folder, wheel_names):
    """A new asset (a second script, an icon, a font) must not be left out by the package-data globs."""
    listed = source_files()
    source = ([f for f in listed if f.startswith(folder + "/")] if listed else
              [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()])
    source = [f for f in source if "__pycache__" not in f and not f.endswith(".pyc")]
    assert source, folder
    target = PACKAGE_DATA_DIRS[folder]
    missing = [f for f in source if target + f[len(folder):] not in wheel_names]
    assert not missing, f"in the repository but not in the wheel: {missing}"


def _purelib(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _clean_env() -> dict[str, str]:
    """This environment minus anything that would lead the installed package back to the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANLENS_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "RANLENS_TORCH_THREADS": "1"}


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns the venv's directory."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _purelib(python)
    # The dependencies (torch alone is gigabytes) come from the test environment: a .pth line naming a
    # directory adds it to sys.path after the venv's own site-packages, and without running the .pth
    # files in it, so the repository's editable-install finder stays out.
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_ranlens_test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    before = set(os.listdir(site))
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0, f"installing the wheel failed:\n{done.stdout}\n{done.stderr}"
    assert set(os.listdir(site)) - before == {"ranlens", DIST_INFO}
    return venv


def test_installed_package_is_the_wheel_not_the_repository(installed, tmp_path):
    site = _purelib(installed / "bin" / "python")
    # where each part would be loaded from, without importing torch (the server below does that)
    code = ("import importlib.resources as r, importlib.util as u, ranlens\n"
            "print(ranlens.__file__)\n"
            "for m in ('ranlens.app.main', 'ranlens.cli', 'ranlens.model'): print(u.find_spec(m).origin)\n"
            "for p in ('ranlens.static', 'ranlens.templates'): print(r.files(p))")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), f"{line} is outside the clean venv {site}"


class _Links(HTMLParser):
    """The local URLs a page loads: scripts, stylesheets, images."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.others: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        url = a.get("src") or (a.get("href") if tag == "link" else None)
        if not url or urlsplit(url).scheme or url.startswith(("//", "#")):
            return  # external or inline (data:) resources are not the package's to serve
        (self.scripts if tag == "script" else self.others).append(url)


def _module_imports(js: str) -> list[str]:
    """Relative ES module imports (static and dynamic) of a script."""
    return re.findall(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}/[^"']+)["']""", js)


@pytest.fixture(scope="module")
def served(installed) -> Iterator[str]:
    """``ranlens serve`` of the clean venv, run from an empty directory outside the repository on a
    socket the test bound (conftest's one server starter), with nothing leading back to the repository."""
    with running_server([str(installed / "bin" / "ranlens"), "serve"], base_env=_clean_env()) as url:
        yield url


# a user's server (no pin, unlike the suite's own servers): the shipped default with the best top-1 answers
USER_DEFAULT = max((get_weights(arch, "DEFAULT") for arch in DEFAULT_WEIGHTS), key=lambda w: w.metrics["top1"])
MODULES = {"attention56_cifar": ["stage1.module1", "stage2.module1", "stage3.module1"],
           "attention92_cifar": ["stage1.module1", "stage1.module2", "stage2.module1", "stage2.module2",
                                 "stage3.module1", "stage3.module2"]}


def test_installed_server_is_ready_with_the_default_weights(served):
    ready = httpx.get(served + "readyz").json()
    assert ready == {"status": "ready", "model": USER_DEFAULT.arch, "weights": USER_DEFAULT.name,
                     "models": sorted(DEFAULT_WEIGHTS.values())}


def test_installed_server_predicts(served):
    data = (PHOTOS / "chelsea.jpg").read_bytes()
    answer = httpx.post(served + "api/v1/predict", files={"file": ("chelsea.jpg", data, "image/jpeg")}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["predictions"][0]["label"] == "cat" and body["weights"] == USER_DEFAULT.name
    assert [a["module"] for a in body["attention"]] == MODULES[USER_DEFAULT.arch]


def test_installed_server_serves_the_page_and_everything_it_loads(served):
    page = httpx.get(served)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="model-line"' in page.text, "the page does not show the loaded model"
    links = _Links()
    links.feed(page.text)
    assert links.scripts, "the page loads no script"
    # the scripts and every module they import, as a browser would fetch them
    seen: set[str] = set()
    queue = [urljoin(served, s) for s in links.scripts]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        script = httpx.get(url)
        assert script.status_code == 200, url
        assert "javascript" in script.headers["content-type"], (url, script.headers["content-type"])
        assert len(script.text) > 100, url
        queue += [urljoin(url, i) for i in _module_imports(script.text)]
    for other in links.others:
        answer = httpx.get(urljoin(served, other))
        assert answer.status_code == 200 and answer.content, other
