"""Many coroutines, one Redis round trip: commands queued in one event-loop turn share a pipeline.

A round trip costs ~60-100 µs of Python CPU in redis-py whatever it carries; a submission or a
finished job needs a few commands. Callers that become ready together (every submission of one
group commit, every job of one claimed batch) queue their commands here instead of each running
their own pipeline: the first caller of a turn schedules a flush for the next turn, the rest join
it. Nothing waits on a timer, so a lone caller pays no latency.

Each caller gets exactly the replies of its own commands; a reply that is an error is returned
(not raised) when the caller asks for `raise_on_error=False`, else the first such error is raised
to that caller alone. A failed round trip (connection lost) fails every caller of that flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline

from common import redisio

# A flush never carries more than this many commands (a burst is split over round trips).
MAX_COMMANDS = 2000

Build = Callable[[Pipeline], None]


class _Group:
    """One flush: a pipeline and, per caller, its slice of the replies."""

    def __init__(self, redis: redisio.Redis) -> None:
        self.pipe = redis.pipeline(transaction=False)
        self.slices: list[tuple[int, int, asyncio.Future[list[Any]]]] = []

    def __len__(self) -> int:
        return len(self.pipe.command_stack)


class Coalescer:
    """Queues callers' commands onto a shared pipeline flushed once per event-loop turn."""

    def __init__(self, redis: redisio.Redis) -> None:
        self._redis = redis
        self._group: _Group | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, build: Build, *, raise_on_error: bool = True) -> list[Any]:
        """Queue the commands `build` puts on the pipeline; their replies, in order."""
        group = self._group
        if group is None or len(group) >= MAX_COMMANDS:
            group = self._group = _Group(self._redis)
            asyncio.get_running_loop().call_soon(self._flush, group)
        start = len(group)
        build(group.pipe)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        group.slices.append((start, len(group), future))
        replies = await future
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _flush(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        task = asyncio.create_task(self._execute(group))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _execute(self, group: _Group) -> None:
        try:
            replies = await group.pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the round trip itself failed: every caller of it learns so
            for _, _, future in group.slices:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for start, end, future in group.slices:
            if not future.done():
                future.set_result(list(replies[start:end]))

    async def drain(self) -> None:
        """Wait for flushes in flight (graceful shutdown)."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
