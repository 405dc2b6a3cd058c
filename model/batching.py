"""Dynamic batching: single-picture requests that arrive close together run as one forward.

Framework-free (threads and futures), so any server can use it: callers prepare their picture in
their own thread (decode, crop, tensor), hand it over, and block until the batch it joined has run;
one thread stacks what has arrived, up to ``max_batch``, and starts one forward, as soon as one of
``concurrency`` forward slots is free (a server with several torch threads runs that many at once).

The worker waits for more pictures only while callers it was told about (``ticket``) are still
preparing theirs, and never past ``window_s``: a lone request runs at once, with no added latency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

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
        with batcher._free:
            # alone (nobody else queued, preparing or holding for a slot; a slot free): run now,
            # without a hop through the batch thread
            alone = (batcher._preparing == 1 and batcher._queue.empty() and not batcher._holding
                     and batcher._running < batcher.concurrency)
            if alone:
                batcher._running += 1
        # withdrawn before it runs or is queued: a batcher that finds it must not wait for it as well
        self.close()
        if alone:
            result = batcher._start([image], [prepared]).result()[0]
        else:
            future: Future = Future()
            batcher._queue.put(_Item(image, prepared, future))
            result = future.result()
        result.timing_ms["preprocess"] = preprocess_ms
        return result

    def close(self) -> None:
        with self._batcher._free:  # explain (a worker thread) and the caller's block may both close it
            if not self._open:
                return
            self._open = False
            self._batcher._preparing -= 1


class Batcher:
    def __init__(self, explainer: Explainer, max_batch: int = 16, window_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None,
                 submit: Callable[..., Future] | None = None, concurrency: int = 1) -> None:
        """``submit(fn, *args)`` starts a forward where the caller wants it (a server's torch threads,
        ``model/torch_thread.py``) and returns its future; by default, on a pool of the batcher's own.
        Up to ``concurrency`` forwards run at once: while they all run, new pictures gather into the
        next batch."""
        if max_batch < 1 or window_s < 0 or concurrency < 1:
            raise ValueError(f"need max_batch >= 1, window_s >= 0 and concurrency >= 1; "
                             f"got {max_batch}, {window_s}, {concurrency}")
        self.explainer, self.max_batch, self.window_s = explainer, max_batch, window_s
        self.on_batch, self.concurrency = on_batch, concurrency
        self._pool = None
        if submit is None:
            self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="forward")
            submit = self._pool.submit
        self.submit = submit
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._free = threading.Condition()  # guards the counts below; notified when a forward ends
        self._preparing = 0
        self._running = 0  # forwards (batches or lone pictures) under way
        self._holding = False  # the batch thread has taken a picture and waits for a slot
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{explainer.weights.name}", daemon=True)
        self._thread.start()

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        """Announces a caller; leaving the block without ``explain`` (a bad upload) withdraws it."""
        with self._free:
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _collect(self, first: _Item) -> list[_Item]:
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                with self._free:
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
            with self._free:  # every slot busy: pictures that arrive meanwhile join the next batch
                self._holding = True
                while self._running >= self.concurrency:
                    self._free.wait()
                self._running += 1
                self._holding = False
            batch = self._collect(first)
            self._start([b.image for b in batch], [b.prepared for b in batch]).add_done_callback(
                partial(self._deliver, batch))

    @staticmethod
    def _deliver(batch: list[_Item], forward: Future) -> None:
        error = forward.exception()
        if error is not None:  # every caller in the batch learns what went wrong
            for b in batch:
                b.future.set_exception(error)
            return
        for b, result in zip(batch, forward.result()):
            b.future.set_result(result)

    def _start(self, images: list[Image.Image], prepared: list[tuple]) -> Future:
        """Starts one forward (a batch, or a lone caller's picture) in a slot the caller has taken;
        the slot is given back, and the forward reported, when it ends."""
        started = time.perf_counter()

        def finished(done: Future) -> None:
            with self._free:
                self._running -= 1
                self._free.notify()
            if self.on_batch is not None and not done.cancelled() and done.exception() is None:
                self.on_batch(len(images), time.perf_counter() - started)  # forwards that answered

        try:
            forward = self.submit(self.explainer.run_prepared, images, prepared)
        except BaseException as exc:  # not started (a pool shut down): the slot is free again
            forward = Future()
            forward.set_exception(exc)
        forward.add_done_callback(finished)
        return forward
