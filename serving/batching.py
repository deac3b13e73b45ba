"""Dynamic batching: requests for one model version wait in a bounded queue and run stacked on the batch dim.

Every request goes through the queue, batching or not, so the bounds hold for all:
the queue holds at most `max_queue` requests, and one more is refused at once
(`RequestError` 503: the client backs off) rather than letting the queue, and every
request's latency, grow without end; a request not answered within `timeout_s` gets
504 and, when it has not started yet, never runs. With `max_batch` > 1 (models whose
inputs and outputs all start with one batch symbol) the worker takes the oldest
request, then waits at most `max_delay_s` from that request's arrival for more rows
of the same per-row shapes, up to `max_batch` rows, runs them as one call and hands
each request its rows. Requests that queued while the previous batch ran are older
than the delay already and go at once, so a busy server batches without waiting.

The model runs in one thread of its own: the event loop keeps taking requests while
a batch runs, and a loaded artifact serializes its calls anyway.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .codec import RequestError


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple
    arrival: float
    future: asyncio.Future
    abandoned: bool = False


@dataclass
class BatchStats:
    """What the batcher reports to the metrics, as callbacks (the batcher knows nothing of Prometheus)."""

    batch: Callable[[int], None] = lambda rows: None
    depth: Callable[[int], None] = lambda depth: None


@dataclass
class Batcher:
    run: Callable[..., dict[str, np.ndarray]]
    max_batch: int = 1
    max_delay_s: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mdoc-model")
        self._task = asyncio.get_running_loop().create_task(self._work())
        self.running = 0  # requests in the batch now running

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request's (validated) inputs; its outputs, or 503 (queue full) or 504 (timed out)."""
        if len(self._queue) >= self.max_queue:
            raise RequestError(f"queue full ({self.max_queue} requests waiting); retry later", 503)
        first = next(iter(feeds.values()))
        rows = first.shape[0] if self.max_batch > 1 and first.ndim else 1
        key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items())) if self.max_batch > 1 else ()
        pending = _Pending(feeds, rows, key, time.monotonic(), asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self.stats.depth(len(self._queue))
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self.timeout_s)
        except asyncio.TimeoutError:
            pending.abandoned = True
            raise RequestError(f"no answer within the timeout of {self.timeout_s:g} s", 504) from None

    async def close(self) -> None:
        """Stop after the queue is empty and the running batch is done (the caller drains first)."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch = await self._gather()
            self.stats.depth(len(self._queue))
            if not batch:
                continue
            self.running = len(batch)
            try:
                outs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # the model failed: every request of the batch hears why
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            else:
                for p, out in zip(batch, outs):
                    if not p.future.done():
                        p.future.set_result(out)
            finally:
                self.running = 0
                self.stats.batch(sum(p.rows for p in batch))

    async def _gather(self) -> list[_Pending]:
        """The next batch: the oldest live request and, within the delay, later ones of its key up to max_batch rows."""
        while self._queue and self._queue[0].abandoned:
            self._queue.popleft()
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, rows = [head], head.rows
        if self.max_batch <= 1 or rows >= self.max_batch:
            return batch
        deadline = head.arrival + self.max_delay_s
        while rows < self.max_batch:
            taken = self._take(head.key, self.max_batch - rows)
            batch += taken
            rows += sum(p.rows for p in taken)
            wait = deadline - time.monotonic()
            if rows >= self.max_batch or wait <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except asyncio.TimeoutError:
                pass
        return batch

    def _take(self, key: tuple, room: int) -> list[_Pending]:
        """Queued live requests of `key` that fit in `room` rows, oldest first; the rest keep their places."""
        taken, kept = [], collections.deque()
        while self._queue:
            p = self._queue.popleft()
            if p.abandoned:
                continue
            if p.key == key and p.rows <= room:
                taken.append(p)
                room -= p.rows
            else:
                kept.append(p)
        self._queue.extendleft(reversed(kept))
        return taken

    def _run(self, batch: list[_Pending]) -> list[dict[str, np.ndarray]]:
        if len(batch) == 1:
            return [self.run(**batch[0].feeds)]
        stacked = {k: np.concatenate([p.feeds[k] for p in batch]) for k in batch[0].feeds}
        outs = self.run(**stacked)
        split = np.cumsum([p.rows for p in batch])[:-1]
        parts = {k: np.split(v, split) for k, v in outs.items()}
        return [{k: parts[k][i] for k in outs} for i in range(len(batch))]
