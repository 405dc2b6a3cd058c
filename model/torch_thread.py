"""One thread for all of a server's model work.

PyTorch's CPU kernels run on an OpenMP team that belongs to the thread that starts them. While one
thread's team is alive, a second thread's forwards ran about 3 times slower on the 2-core development
machine (40 ms against 12 ms per /api/v1/predict request for attention56_cifar, read from the answers'
``timing_ms.inference``), and a server has many threads: the loader, the batchers, the request workers.
So every forward, model load and architecture read goes through this one thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

__all__ = ["TorchThread"]


class TorchThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        self._ident: int | None = None
        self._pool.submit(self._remember).result()

    def _remember(self) -> None:
        self._ident = threading.get_ident()

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Runs ``fn`` on the torch thread and waits (directly, if already on it)."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    async def acall(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Runs ``fn`` on the torch thread without blocking the event loop."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
