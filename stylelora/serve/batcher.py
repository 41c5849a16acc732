"""The request queue: jobs that arrive together and can share a pipeline call are painted in one batch.

One worker thread takes the oldest job, waits a few milliseconds for others with the same batch key (steps,
guidance, sampler, size), and paints them together, whatever adapters each asks for. The queue is bounded:
a full queue refuses new jobs at once (the server answers 503 with Retry-After) instead of letting latency grow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from ..errors import ServerBusyError, StyleloraError
from ..paint.engine import Engine, PaintJob


class Batcher:
    def __init__(self, engine: Engine, max_queue: int = 64, max_batch_images: int = 8, window_seconds: float = 0.01,
                 on_batch: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.max_queue, self.max_batch_images, self.window = max_queue, max_batch_images, window_seconds
        self.on_batch = on_batch  # (images, seconds) of each painted batch, for the metrics
        self._queue: list[tuple[PaintJob, Future]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="stylelora-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, job: PaintJob) -> Future:
        """Queue a job; its future gets the job's images. Raises ServerBusyError when the queue is full."""
        future: Future = Future()
        with self._changed:
            if len(self._queue) >= self.max_queue:
                raise ServerBusyError(f"the queue holds {self.max_queue} requests (--max-queue); try again shortly")
            self._queue.append((job, future))
            self._changed.notify_all()
        self.engine.pool.prefetch(name for name, _ in job.stack)  # read files while the job waits
        return future

    def _take_batch(self) -> list[tuple[PaintJob, Future]]:
        with self._changed:
            while not self._queue and not self._closed:
                self._changed.wait()
            if self._closed:
                return []
            key = self._queue[0][0].batch_key()
            deadline = time.monotonic() + self.window
            while self._images(key) < self.max_batch_images and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            batch, images = [], 0
            for item in list(self._queue):
                count = item[0].config.count
                if item[0].batch_key() == key and (not batch or images + count <= self.max_batch_images):
                    batch.append(item)
                    images += count
                    self._queue.remove(item)
            return batch

    def _images(self, key: tuple) -> int:
        return sum(job.config.count for job, _ in self._queue if job.batch_key() == key)

    def _run(self) -> None:
        while batch := self._take_batch():
            start = time.perf_counter()
            self._paint(batch)
            if self.on_batch is not None:
                self.on_batch(sum(job.config.count for job, _ in batch), time.perf_counter() - start)

    def _paint(self, batch: list[tuple[PaintJob, Future]]) -> None:
        live = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.engine.paint([job for job, _ in live])
        except StyleloraError as error:
            if len(live) > 1:  # one job's adapter failed to read: paint the others without it
                for item in live:
                    self._paint_alone(item)
                return
            live[0][1].set_exception(error)
            return
        except Exception as error:  # noqa: BLE001 - reported to the waiting requests, not lost in this thread
            for _, future in live:
                future.set_exception(error)
            return
        for (_, future), images in zip(live, results):
            future.set_result(images)

    def _paint_alone(self, item: tuple[PaintJob, Future]) -> None:
        job, future = item
        try:
            future.set_result(self.engine.paint([job])[0])
        except Exception as error:  # noqa: BLE001
            future.set_exception(error)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()
            self._changed.notify_all()
        self._worker.join(timeout=60)
