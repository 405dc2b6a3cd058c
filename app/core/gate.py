"""Backpressure for inference: a few run at once, a bounded number wait, and nobody waits for ever.

Without a bound, more clients only mean longer waits for all of them. The gate answers a request it
cannot serve soon with 503 and ``Retry-After`` at once (queue full) or after the configured wait
(no slot freed in time), so clients back off and the server stays ready.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Busy(Exception):
    """No inference slot now; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, detail: str, retry_after: int, reason: str) -> None:
        super().__init__(detail)
        self.detail, self.retry_after, self.reason = detail, retry_after, reason


class InferenceGate:
    def __init__(self, concurrency: int, max_waiting: int, max_wait_s: float) -> None:
        if concurrency < 1 or max_waiting < 0 or max_wait_s <= 0:
            raise ValueError(f"need concurrency >= 1, max_waiting >= 0, max_wait_s > 0; got "
                             f"{concurrency}, {max_waiting}, {max_wait_s}")
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.max_waiting, self.max_wait_s = max_waiting, max_wait_s
        self.waiting = 0
        self.rejected = 0

    @property
    def running(self) -> int:
        return int(self.limiter.borrowed_tokens)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.max_wait_s / 2))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one inference slot; raises ``Busy`` if the queue is full or the wait runs out."""
        if self.limiter.available_tokens == 0 and self.waiting >= self.max_waiting:
            self.rejected += 1
            raise Busy(f"{self.running} inferences are running and {self.waiting} waiting, the most this server "
                       f"queues; try again shortly", self._retry_after(), "queue_full")
        self.waiting += 1
        try:
            with anyio.move_on_after(self.max_wait_s) as waited:
                await self.limiter.acquire()
        finally:
            self.waiting -= 1
        if waited.cancelled_caught:
            self.rejected += 1
            raise Busy(f"no inference slot came free within {self.max_wait_s:g} s; try again shortly",
                       self._retry_after(), "wait_timeout")
        try:
            yield
        finally:
            self.limiter.release()
