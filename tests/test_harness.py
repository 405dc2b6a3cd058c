"""The harness's own promise: a server that ignores SIGTERM fails its test with its log and is not
left running (``stop_server``, used by ``running_server`` and the workers test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import stop_server

IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('up', flush=True); time.sleep(120)")


def test_a_server_that_will_not_stop_is_killed_and_fails_the_test_with_its_log():
    with subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline() == "up\n"  # its SIGTERM handler is in place
        with pytest.raises(pytest.fail.Exception, match=r"did not stop within 1 s of SIGTERM: the log"):
            stop_server(proc, lambda: "the log", timeout=1)
        assert proc.poll() is not None, "the server was left running"


def test_a_server_that_stops_passes_quietly():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stop_server(proc, lambda: "unused", timeout=10)
    assert proc.returncode == -15
