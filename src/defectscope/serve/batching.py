"""A bounded queue in front of one inference thread that takes requests in small batches.

A request first reserves a place (:meth:`Batcher.reserve`): at most ``capacity`` requests wait
(between admission and the moment the worker takes them into a batch); the next one is refused
at once, so the service never builds an unbounded backlog. The worker takes the first waiting
item, then waits at most ``window`` seconds for more, up to ``max_batch``, and runs the batch
function on them together; every item's future gets its own outcome (or the batch's exception).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """No place left in the queue."""


class Batcher:
    """Collect items into batches for ``run_batch(items) -> outcomes`` on one worker thread."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int, window: float, capacity: int) -> None:
        if max_batch < 1 or capacity < 1 or window < 0:
            raise ValueError(f"need max_batch >= 1, capacity >= 1 and window >= 0, got {max_batch}, {capacity}, {window}")
        self.run_batch = run_batch
        self.max_batch, self.window, self.capacity = max_batch, window, capacity
        self._lock = threading.Condition()
        self._items: deque[tuple[Any, Future]] = deque()
        self._reserved = 0
        self._stopping = False
        self.batches = 0
        self.processed = 0
        self._thread = threading.Thread(target=self._work, name="defectscope-inference", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet taken into a batch."""
        with self._lock:
            return self._reserved

    def reserve(self) -> None:
        """Take a place in the queue, or raise :class:`QueueFull`."""
        with self._lock:
            if self._stopping or self._reserved >= self.capacity:
                raise QueueFull()
            self._reserved += 1

    def release(self) -> None:
        """Give back a reserved place that will not be submitted (the request was refused)."""
        with self._lock:
            self._reserved -= 1
            self._lock.notify_all()

    def submit(self, item: Any) -> Future:
        """Queue ``item`` on a reserved place; the future gets its outcome."""
        future: Future = Future()
        with self._lock:
            self._items.append((item, future))
            self._lock.notify_all()
        return future

    def _take(self) -> list[tuple[Any, Future]] | None:
        with self._lock:
            while not self._items:
                if self._stopping:
                    return None
                self._lock.wait(0.5)
            deadline = time.monotonic() + self.window
            while len(self._items) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            self._reserved -= len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                outcomes = self.run_batch([item for item, _ in live])
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the failure
                for _, future in live:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.processed += len(live)
            for (_, future), outcome in zip(live, outcomes):
                future.set_result(outcome)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the items already queued, then end the worker."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout)
