from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# everything the tests read is in the repository: a clone with nothing beside it passes
PHOTOS = ROOT / "static" / "examples"
CIFAR_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar10-test"
# the `ranlens` console script of the interpreter running the tests
RANLENS = str(Path(sys.executable).with_name("ranlens"))

torch.set_num_threads(int(os.environ.get("RANLENS_TEST_THREADS", "2")))

# The caller's settings must not steer the tests: RANLENS_* variables would change which weights the
# app loads, its limits and its port. Removed at import, before any test module builds Settings.
# The variables that steer the tests themselves (RANLENS_TEST_THREADS, RANLENS_SCREENSHOTS,
# RANLENS_SCHEMATHESIS_EXAMPLES) are not app settings and stay.
TEST_CONTROLS = {"RANLENS_TEST_THREADS", "RANLENS_SCREENSHOTS", "RANLENS_SCHEMATHESIS_EXAMPLES"}


def _app_settings_in_environment() -> list[str]:
    return sorted(k for k in os.environ if k.upper().startswith("RANLENS_") and k.upper() not in TEST_CONTROLS)


for _key in _app_settings_in_environment():
    del os.environ[_key]
# What the suite's own servers run with. Requests that name no model go to Attention-56: the tests'
# expectations (three modules, its shapes) were written for it, and it is the faster network. Which
# model answers when nothing is pinned (the best recorded top-1) is tested where the pin is lifted.
SUITE_SETTINGS = {"RANLENS_DEFAULT_MODEL": "attention56_cifar"}
os.environ.update(SUITE_SETTINGS)
# A .env file is read from the working directory (pydantic-settings), so the tests run in an empty
# one: entered when the session starts (after pytest has resolved its test paths against the
# caller's directory), before collection imports the app, which reads its settings then.
_WORKDIR = tempfile.TemporaryDirectory(prefix="ranlens-tests-")


def pytest_sessionstart(session: pytest.Session) -> None:
    os.chdir(_WORKDIR.name)


@pytest.fixture(scope="session", autouse=True)
def _isolated_from_the_caller(tmp_path_factory) -> Iterator[None]:
    """Every test sees no RANLENS_* app setting, no .env, and its own data cache (XDG_CACHE_HOME)."""
    leaked = [k for k in _app_settings_in_environment() if os.environ[k] != SUITE_SETTINGS.get(k)]
    assert not leaked, f"RANLENS_* variables reappeared: {leaked}"
    assert Path.cwd() == Path(_WORKDIR.name).resolve()
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        mp.setattr("ranlens.model.data.CACHE_DIR", cache / "ranlens")
        yield


@contextmanager
def running_server(command: list[str], base_env: dict[str, str] | None = None, stop_timeout: float = 60,
                   **env: str) -> Iterator[str]:
    """Run ``command --fd N`` (uvicorn, or ``ranlens serve``) on a socket this process bound, until
    ``/readyz`` answers 200; yield its base URL.

    Binding here and handing the socket over leaves no moment in which another process could take
    the port (a port picked, released, then bound by the server can be). The server runs in an
    empty working directory, so no .env is read; its environment is ``base_env`` (default: this
    process's) plus ``env``. Leaving the block stops it (``stop_server`` with ``stop_timeout``).
    """
    with socket.socket() as sock, tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryFile() as log:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # a file, not a pipe: nobody reads the server's log while it runs, and a full pipe would block it
        proc = subprocess.Popen([*command, "--fd", str(sock.fileno())], cwd=cwd, env={**(os.environ if base_env is None else base_env), **env},
                                stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()])
        url = f"http://127.0.0.1:{port}/"

        def output() -> str:
            return log_tail(log)

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
                pytest.fail("server did not become ready: " + output())
            yield url
        finally:
            stop_server(proc, output, timeout=stop_timeout)


def stall_upload(sock: socket.socket, url: str) -> None:
    """Start a POST /api/v1/predict on ``sock`` that the app begins to read, then send no more of its
    body: a client gone quiet mid-upload, whose request never ends on its own."""
    sock.settimeout(30)
    where = urllib.parse.urlsplit(url)
    sock.connect((where.hostname, where.port))
    sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n")
    # uvicorn answers 100 Continue when the app first asks for the body: the request is in its hands
    assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue"), "the app never read the body"
    sock.sendall(b"--b\r\n")


def log_tail(log: IO[bytes]) -> str:
    """The end of a server's log file, for a failing test's message."""
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def stop_server(proc: subprocess.Popen, output: Callable[[], str], timeout: float = 60) -> None:
    """SIGTERM, then wait ``timeout`` seconds; a server still up is killed and the test fails with
    ``output()`` (its log), so a hung shutdown never passes silently or leaves a process behind."""
    proc.terminate()
    try:
        # generous: a request still running when the test ends finishes first, and on two busy
        # cores that took over ten seconds once (a CI run beside two training jobs)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"server did not stop within {timeout:g} s of SIGTERM: " + output())


@pytest.fixture(scope="session")
def cifar_test_images() -> dict[str, list[Path]]:
    """Three committed CIFAR-10 test images per class (tests/fixtures/README.md)."""
    found = {d.name: sorted(d.glob("*.jpg")) for d in sorted(CIFAR_FIXTURES.iterdir()) if d.is_dir()}
    assert len(found) == 10 and all(len(v) == 3 for v in found.values()), "tests/fixtures/cifar10-test is incomplete"
    return found


@pytest.fixture
def kill_at_step(monkeypatch):
    """``kill_at_step(n)`` makes training stop as a killed process would, inside step ``n`` (counted
    from 1) before that step changes anything; it returns the list of steps begun, which goes on
    counting the steps after."""
    import ranlens.model.train as training

    real_step = training.train_step

    def arm(n: int) -> list:
        begun = []

        def step(*args, **kwargs):
            begun.append(1)
            if len(begun) == n:
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)

        monkeypatch.setattr(training, "train_step", step)
        return begun

    return arm
