"""Dynamic batching: requests are queued one image at a time; one task takes up to `max_batch` of them,
waiting at most `max_wait_ms` for more after the first, and runs the model once for all of them in a
thread, so throughput grows with load while a lone request waits only `max_wait_ms`."""

from __future__ import annotations

import asyncio

import numpy as np

from visionzoo.serve.classifier import Classifier
from visionzoo.serve.settings import ServeSettings

__all__ = ["DynamicBatcher", "QueueFull", "ModelError"]


class QueueFull(Exception):
    """More images wait than `ServeSettings.queue` allows: the request gets 503 with Retry-After."""


class ModelError(Exception):
    """The model raised on a batch: each of its requests gets 500, and the server goes on."""


class DynamicBatcher:
    """Gathers concurrent requests into batches for one model; counts its model calls."""

    def __init__(self, classifier: Classifier, settings: ServeSettings):
        self.classifier = classifier
        self.settings = settings
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.model_calls = 0
        self.batch_sizes: list[int] = []

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.settings.queue)
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.task = None

    @property
    def ready(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, array: np.ndarray) -> np.ndarray:
        if self.queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((array, future))
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        deadline = loop.time() + self.settings.max_wait_ms / 1e3
        while len(items) < self.settings.max_batch:
            remaining = deadline - loop.time()
            try:
                items.append(self.queue.get_nowait() if remaining <= 0 else
                             await asyncio.wait_for(self.queue.get(), remaining))
            except (TimeoutError, asyncio.QueueEmpty):
                break
        return [(array, future) for array, future in items if not future.cancelled()]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._next_batch()
            if not live:
                continue
            try:
                batch = np.stack([array for array, _ in live])
                self.model_calls += 1
                self.batch_sizes.append(len(live))
                probs = await loop.run_in_executor(None, self.classifier, batch)
            except Exception as error:  # the model failed: these requests get 500, the server goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(ModelError(f"{type(error).__name__}: {error}"))
                continue
            for (_, future), row in zip(live, probs):
                if not future.done():
                    future.set_result(row)
