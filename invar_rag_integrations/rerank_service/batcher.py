"""Cross-request batching: concurrent rerank requests are gathered into one scorer call, run in
a worker thread so the event loop never waits on the model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# score(queries, documents per query, top_n per query) -> one result per query
ScoreFn = Callable[[list[str], list[list[str]], list[int | None]], Sequence[Any]]


class QueueFull(RuntimeError):
    """More pairs are waiting than the batcher holds (the client should retry later)."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


class ScoringFailed(RuntimeError):
    """The scorer raised while scoring the batch that held this request."""


def check_batching(max_batch_pairs: int, max_wait_ms: float, max_queued_pairs: int) -> None:
    """Fail on batching settings that cannot work, naming the value."""
    for name, value, low in (("max_batch_pairs", max_batch_pairs, 1),
                             ("max_wait_ms", max_wait_ms, 0),
                             ("max_queued_pairs", max_queued_pairs, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass(eq=False)
class _Job:
    query: str
    documents: list[str]
    top_n: int | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


def _settle(future: asyncio.Future, result: Any = None,
            error: BaseException | None = None) -> None:
    """Resolve ``future`` on its loop, unless its request has gone (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class RequestBatcher:
    """Gathers requests (a query and its documents) into scorer batches of whole requests.

    A batch starts with the oldest waiting request and takes the next ones, in arrival order,
    while their pairs fit in ``max_batch_pairs`` (a larger request goes alone); it waits for
    company at most ``max_wait_ms`` after the oldest request arrived, so under load (requests
    queue while the scorer works) it adds no wait at all. ``max_batch_pairs = 1`` turns batching
    off: one request per scorer call.

    Args:
        score: The scorer call (runs in the worker thread).
        max_batch_pairs: Pairs (query, document) per scorer call.
        max_wait_ms: Longest wait for more requests to join a batch.
        max_queued_pairs: Pairs allowed to wait; a request beyond it fails with
            :class:`QueueFull` (unless the queue is empty).
    """

    def __init__(self, score: ScoreFn, max_batch_pairs: int = 64, max_wait_ms: float = 5.0,
                 max_queued_pairs: int = 4096):
        check_batching(max_batch_pairs, max_wait_ms, max_queued_pairs)
        self.score, self.max_batch_pairs = score, max_batch_pairs
        self.max_wait, self.max_queued_pairs = max_wait_ms / 1000, max_queued_pairs
        self._queue: deque[_Job] = deque()
        self._queued_pairs = 0
        self.scoring_pairs = 0  # pairs of the batch the scorer reads now
        self._closed = False
        self._condition = threading.Condition()
        self.counts = {"batches": 0, "requests": 0, "pairs": 0, "withdrawn": 0, "failed": 0}
        self._worker = threading.Thread(target=self._run, name="invar-rerank-scorer",
                                        daemon=True)
        self._worker.start()

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting for the scorer (not those it is reading now)."""
        return self._queued_pairs

    async def submit(self, query: str, documents: list[str], top_n: int | None) -> Any:
        """The scorer's result for one request, once its batch is scored.

        Raises:
            QueueFull: Too many pairs are waiting.
            BatcherClosed: The batcher is shutting down.
            ScoringFailed: The scorer raised on this request's batch (the cause chained).
        """
        loop = asyncio.get_running_loop()
        job = _Job(query, documents, top_n, loop.create_future(), loop)
        with self._condition:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._queue and self._queued_pairs + len(documents) > self.max_queued_pairs:
                raise QueueFull(f"{self._queued_pairs} pairs are waiting (max_queued_pairs = "
                                f"{self.max_queued_pairs}); retry later")
            self._queue.append(job)
            self._queued_pairs += len(documents)
            self._condition.notify()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: its pairs leave the queue
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        with self._condition:
            if job in self._queue:
                self._queue.remove(job)
                self._queued_pairs -= len(job.documents)
                self.counts["withdrawn"] += 1

    def _next_batch(self) -> list[_Job]:
        """Wait for the next batch (empty: closed and nothing left)."""
        with self._condition:
            while True:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return []
                deadline = self._queue[0].arrived + self.max_wait
                while (self._queue and not self._closed
                       and self._queued_pairs < self.max_batch_pairs
                       and (left := deadline - time.monotonic()) > 0):
                    self._condition.wait(left)
                if self._queue:  # else all withdrawn while waiting: wait again
                    break
            batch, pairs = [], 0
            while self._queue and (not batch or pairs + len(self._queue[0].documents)
                                   <= self.max_batch_pairs):
                job = self._queue.popleft()
                batch.append(job)
                pairs += len(job.documents)
            self._queued_pairs -= pairs
            return batch

    def _run(self) -> None:
        while batch := self._next_batch():
            self.scoring_pairs = sum(len(j.documents) for j in batch)
            try:
                results = self.score([j.query for j in batch], [j.documents for j in batch],
                                     [j.top_n for j in batch])
            except Exception as err:  # noqa: BLE001 - reported to each request of the batch
                self.counts["failed"] += len(batch)
                failure = ScoringFailed(f"scoring failed: {type(err).__name__}: {err}")
                failure.__cause__ = err
                for job in batch:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, failure)
                continue
            finally:
                self.scoring_pairs = 0
            self.counts["batches"] += 1
            self.counts["requests"] += len(batch)
            self.counts["pairs"] += sum(len(j.documents) for j in batch)
            for job, result in zip(batch, results):
                job.loop.call_soon_threadsafe(_settle, job.future, result)

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the waiting ones, and stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._worker.join(timeout)
