"""Dynamic batching: single-picture requests that arrive close together run as one forward.

Framework-free (threads and futures), so any server can use it: callers prepare their picture in
their own thread (decode, crop, tensor), hand it over, and block until the batch it joined has run;
one worker thread stacks what has arrived, up to ``max_batch``, and runs the model once.

The worker waits for more pictures only while callers it was told about (``ticket``) are still
preparing theirs, and never past ``window_s``: a lone request runs at once, with no added latency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from .explainer import Explainer, Explanation

__all__ = ["Batcher"]


@dataclass
class _Item:
    image: Image.Image
    prepared: tuple
    future: Future


class Ticket:
    """A caller the batcher should wait for while it prepares its picture; ``explain`` hands it over."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher, self._open = batcher, True

    def explain(self, image: Image.Image) -> Explanation:
        t0 = time.perf_counter()
        prepared = self._batcher.explainer.prepare(image)  # in the caller's thread, beside other batches
        preprocess_ms = 1000 * (time.perf_counter() - t0)
        batcher = self._batcher
        with batcher._lock:
            # alone (nobody queued, preparing or running): run now, without a hop through the batch thread
            alone = batcher._preparing == 1 and batcher._queue.empty() and not batcher._running
            if alone:
                batcher._running = True
        # withdrawn before it runs or is queued: a batcher that finds it must not wait for it as well
        self.close()
        if alone:
            result = batcher._forward([image], [prepared])[0]
        else:
            future: Future = Future()
            batcher._queue.put(_Item(image, prepared, future))
            result = future.result()
        result.timing_ms["preprocess"] = preprocess_ms
        return result

    def close(self) -> None:
        with self._batcher._lock:  # explain (a worker thread) and the caller's block may both close it
            if not self._open:
                return
            self._open = False
            self._batcher._preparing -= 1


class Batcher:
    def __init__(self, explainer: Explainer, max_batch: int = 16, window_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None,
                 run: Callable | None = None) -> None:
        """``run(fn, *args)`` runs the forward where the caller wants it (a server's one torch thread,
        ``model/torch_thread.py``); by default, in the batcher's own thread."""
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"need max_batch >= 1 and window_s >= 0; got {max_batch}, {window_s}")
        self.explainer, self.max_batch, self.window_s = explainer, max_batch, window_s
        self.on_batch = on_batch
        self.run = run or (lambda fn, *args: fn(*args))
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._preparing = 0
        self._running = False  # a forward (batch or lone) is under way
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{explainer.weights.name}", daemon=True)
        self._thread.start()

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        """Announces a caller; leaving the block without ``explain`` (a bad upload) withdraws it."""
        with self._lock:
            self._preparing += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            ticket.close()

    def explain(self, image: Image.Image) -> Explanation:
        """One picture through the batcher, for a caller that did not announce itself."""
        with self.ticket() as ticket:
            return ticket.explain(image)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: _Item) -> list[_Item]:
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    preparing = self._preparing
                left = deadline - time.perf_counter()
                if preparing == 0 or left <= 0:
                    break
                try:  # short waits: a caller that gives up (a bad upload) must not hold the batch back
                    item = self._queue.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if item is None:  # closing: run what we have, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            try:
                results = self._forward([b.image for b in batch], [b.prepared for b in batch])
            except Exception as exc:  # every caller in the batch learns what went wrong
                for b in batch:
                    b.future.set_exception(exc)
                continue
            for b, result in zip(batch, results):
                b.future.set_result(result)

    def _forward(self, images: list[Image.Image], prepared: list[tuple]) -> list[Explanation]:
        """One forward (a batch, or a lone caller's picture), marked as running and reported."""
        started = time.perf_counter()
        with self._lock:
            self._running = True
        try:
            results = self.run(self.explainer.run_prepared, images, prepared)
        finally:
            with self._lock:
                self._running = False
        if self.on_batch is not None:
            self.on_batch(len(images), time.perf_counter() - started)
        return results
