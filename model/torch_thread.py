"""The threads that do all of a server's model work.

PyTorch's CPU kernels run on an OpenMP team that belongs to the thread that starts them. While one
thread's team is alive, a second thread's forwards ran about 3 times slower on the 2-core development
machine (40 ms against 12 ms per /api/v1/predict request for attention56_cifar, read from the answers'
``timing_ms.inference``), and a server has many threads: the loader, the batchers, the request workers.
So every forward, model load and architecture read goes through these threads: one by default, or
``workers`` of them, each running its own forwards at the same time. Several workers only pay with one
intra-op thread each (``torch.set_num_threads(1)``: no OpenMP team at all), and only for traced models
(``Explainer.trace``), whose forward runs in C++ without holding the GIL between layers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

__all__ = ["TorchThread"]


class TorchThread:
    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"need at least one worker, got {workers}")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torch")

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Runs ``fn`` on a torch thread; the future holds its result."""
        return self._pool.submit(fn, *args, **kwargs)

    async def acall(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Runs ``fn`` on a torch thread without blocking the event loop."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    def everywhere(self, fn: Callable[[], None]) -> None:
        """Runs ``fn`` once on every torch thread (per-thread settings such as torch's thread count)."""
        barrier = threading.Barrier(self.workers)

        def once() -> None:
            barrier.wait(timeout=30)  # holds each worker until all have one: no worker takes two
            fn()

        for future in [self._pool.submit(once) for _ in range(self.workers)]:
            future.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
