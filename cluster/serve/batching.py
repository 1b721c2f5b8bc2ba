"""Micro-batching for the model deployments: a batch is what queued while the previous batch ran.

Ray Serve's `@serve.batch` (Ray 2.60, `ray/serve/batching.py`) forms the next batch *before* it waits for the
running one (the `max_concurrent_batches` semaphore is taken after `wait_for_batch`). With a short
`batch_wait_timeout_s` it therefore queues batches of one behind a busy model, and with a long one it delays
every request at low load. `Batcher` forms a batch only when the model is free: at concurrency 1 a request goes
straight through, under load the batch is everything that queued meanwhile (up to `max_batch_size`), and
`wait_s` > 0 additionally waits that long for a fuller batch when the queue runs dry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def run_batch(fn: Callable[[list], list], items: list) -> list:
    """Run a batch; if it fails, run its items one by one so one bad item fails only its own request.

    Failures come back as exception objects (the caller re-raises them) and never as StopIteration, which
    asyncio cannot carry through a future (it would wedge the batch loop).
    """
    try:
        return fn(items)
    except Exception:  # noqa: BLE001 - isolated below, item by item
        out = []
        for item in items:
            try:
                out.extend(fn([item]))
            except StopIteration as exc:
                out.append(RuntimeError(f"StopIteration in {fn.__name__}: {exc!r}"))
            except Exception as exc:  # noqa: BLE001 - handed to the caller of this item
                out.append(exc)
        return out


class Batcher:
    """`await submit(item)` -> (result, queue wait ms); `fn(list) -> list` runs in a thread, one batch at a time."""

    def __init__(self, fn: Callable[[list], list], max_batch_size: int = 16, wait_s: float = 0.0):
        self.fn = fn
        self.configure(max_batch_size, wait_s)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        """serve.batch_max_size / serve.batch_wait_timeout_s (a deployment's `reconfigure`)."""
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))

    async def submit(self, item: Any) -> tuple[Any, float]:
        if self._task is None or self._task.done():  # started on the replica's own event loop
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, time.perf_counter()))
        return await future

    async def _next_batch(self) -> list:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [entry for entry in batch if not entry[1].done()]  # callers that went away are skipped

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await asyncio.to_thread(run_batch, self.fn, [item for item, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - e.g. a wrong result count: every caller gets it
                results = [exc] * len(batch)
            if len(results) != len(batch):
                results = [
                    RuntimeError(f"{self.fn.__name__} returned {len(results)} for {len(batch)}")
                ] * len(batch)
            for (_, future, queued_at), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result((result, (start - queued_at) * 1000))
