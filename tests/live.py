"""The app under a real uvicorn, for tests that need real HTTP (one server starter: conftest's)."""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager

from .conftest import ROOT, running_server

__all__ = ["ROOT", "live_server"]


def live_server(**env: str) -> AbstractContextManager[str]:
    """Serve ``ranlens.app.main:app`` until ``/readyz`` answers 200; the context yields its base URL."""
    threads = os.environ.get("RANLENS_TEST_THREADS", "1")
    return running_server([sys.executable, "-m", "uvicorn", "ranlens.app.main:app"],
                          **{"RANLENS_TORCH_THREADS": threads, **env})
