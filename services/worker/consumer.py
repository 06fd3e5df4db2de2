"""Reading a set of streams through a consumer group with bounded concurrency.

New entries come from XREADGROUP (blocking); entries left idle by dead
consumers come back through XAUTOCLAIM past the visibility timeout. XAUTOCLAIM,
not XCLAIM: we do not know which consumer died. On SIGTERM the reader stops,
in-flight entries get the grace period to finish, and whatever is unfinished
stays pending for another consumer to claim (handed back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from common import redisio

log = logging.getLogger(__name__)

Handler = Callable[[str, str, dict[str, str]], Awaitable[None]]


class StreamConsumer:
    """Feeds entries of `streams` to `handler`, at most `concurrency` at a time."""

    def __init__(
        self,
        redis: redisio.Redis,
        blocking: redisio.Redis,
        streams: Sequence[str],
        group: str,
        consumer: str,
        handler: Handler,
        *,
        concurrency: int,
        visibility_timeout_s: float,
        on_claim: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._blocking = blocking
        self._streams = list(streams)
        self._group = group
        self.consumer = consumer
        self._handler = handler
        self._concurrency = concurrency
        self._visibility_ms = int(visibility_timeout_s * 1000)
        self._on_claim = on_claim
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cursors: dict[str, str] = {}  # where the next XAUTOCLAIM scan of each stream starts

    async def start(self) -> None:
        """Create the groups and start reading and claiming."""
        for stream in self._streams:
            await redisio.ensure_group(self._redis, stream, self._group)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"{self._group}-read"),
            asyncio.create_task(self._claim_loop(), name=f"{self._group}-claim"),
        ]

    async def stop(self, grace: float) -> None:
        """Stop taking entries; give in-flight ones `grace` seconds, then hand the rest back."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d entries handed back unfinished", len(pending))
                await asyncio.wait(pending, timeout=1.0)

    @property
    def in_flight(self) -> int:
        """Entries being handled now."""
        return len(self._inflight)

    def _spawn(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        task = asyncio.create_task(self._guarded(stream, entry_id, fields))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _guarded(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            await self._handler(stream, entry_id, fields)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The entry stays pending and is claimed again after the visibility timeout.
            log.exception("handling entry %s of %s failed; it will be retried", entry_id, stream)

    async def _free_slots(self) -> int:
        while len(self._inflight) >= self._concurrency:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        return self._concurrency - len(self._inflight)

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            count = await self._free_slots()
            try:
                response = await self._blocking.xreadgroup(
                    self._group,
                    self.consumer,
                    dict.fromkeys(self._streams, ">"),
                    count=count,
                    block=redisio.BLOCK_MS,
                )
            except RedisError as exc:
                await self._recover(exc)
                continue
            batches: Any = response or []
            for stream, entries in batches:
                for entry_id, fields in entries:
                    self._spawn(stream, entry_id, fields)

    async def _claim_loop(self) -> None:
        interval = max(0.2, self._visibility_ms / 4000)
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            try:
                await self.claim_idle()
            except RedisError as exc:
                await self._recover(exc)

    async def claim_idle(self) -> int:
        """Take over entries idle longer than the visibility timeout; returns how many.

        Each call goes on from where the last one stopped: XAUTOCLAIM looks at a bounded
        number of pending entries per call, so restarting at 0-0 every time could keep an idle
        entry behind a long run of busy ones out of reach while the backlog lasts.
        """
        claimed = 0
        for stream in self._streams:
            count = await self._free_slots()
            cursor = self._cursors.get(stream, "0-0")
            claimed_raw: Any = await self._redis.xautoclaim(
                stream, self._group, self.consumer, self._visibility_ms, cursor, count=count
            )
            self._cursors[stream] = str(claimed_raw[0])
            for entry_id, fields in claimed_raw[1]:
                if fields:
                    self._spawn(stream, entry_id, fields)
                    claimed += 1
        if claimed and self._on_claim is not None:
            self._on_claim(claimed)
        return claimed

    async def _recover(self, exc: RedisError) -> None:
        if redisio.is_nogroup(exc):
            log.warning("consumer group %s vanished; recreating it", self._group)
            for stream in self._streams:
                with contextlib.suppress(RedisError):
                    await redisio.ensure_group(self._redis, stream, self._group)
            return
        log.warning("redis unavailable for %s: %s", self._group, type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=0.5)
