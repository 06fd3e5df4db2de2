"""Group commit: callers that arrive together share one write, each awaiting its own outcome.

A store round trip costs far more CPU than the work it carries (a MongoDB insert_many of 50
documents costs little more than one insert; a Redis script call the same for 1 or 50 ids).
`Batcher.submit(item)` parks the caller; the first caller of a batch schedules the flush for
the next event-loop turn (window 0: everything that became ready together goes, and a lone
caller waits for nothing) or after a short window (e.g. the gateway's insert window, so that
submissions arriving over a few milliseconds share one journal flush). The flush function
gets every item and answers, per item, a result or an exception; the caller gets exactly that.

`max_in_flight` bounds the flushes running at once (0: no bound). Items that arrive while that
many are running wait for one to end and then go together at once: the batch grows with the
store's latency. That is what makes a journaled write (MongoDB `j: true`, one log flush per
write) scale: a slow flush gathers everything that arrived meanwhile into the next one, instead
of one small write (and one log flush) per window queueing up behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    """Collects items and flushes them together; each caller awaits its own item's result."""

    def __init__(
        self, flush: Flush[T, R], *, window_s: float = 0.0, max_items: int = 500, max_in_flight: int = 0
    ) -> None:
        self._flush_fn = flush
        self._window = window_s
        self._max = max_items
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.Handle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Queue `item` with whatever else arrives now; its result, or what its flush raised for it."""
        return await self._queue(item)

    def post(self, item: T) -> None:
        """Queue `item` without waiting for its flush; its result or error is dropped.

        For steps nobody waits on that are safe to repeat or lose (closing a breaker).
        """
        self._queue(item).add_done_callback(_dropped)

    def _queue(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max:
            self._flush_now()
        elif self._timer is None:
            self._timer = (
                loop.call_later(self._window, self._flush_now)
                if self._window > 0
                else loop.call_soon(self._flush_now)
            )
        return future

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and not (self._max_in_flight and len(self._flushes) >= self._max_in_flight):
            if self._max_in_flight:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            else:
                batch, self._pending = self._pending, []
            task = asyncio.create_task(self._run(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if self._pending and self._timer is None:  # they waited for a flush to end: no window more
            self._flush_now()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[R | BaseException] = await self._flush_fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a flush answered {len(results)} results for {len(batch)} items")
        except Exception as exc:  # the flush as a whole failed: every caller of it learns why
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def drain(self) -> None:
        """Flush what is pending and wait for flushes in flight (graceful shutdown)."""
        self._flush_now()
        while self._flushes:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._flushes)
            self._flush_now()


def _dropped(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a posted item's failure is not an unhandled error
