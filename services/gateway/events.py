"""Job state-change notifications for WatchJob: one Redis pub/sub connection per gateway.

Workers publish on `keys.job_events(job_id)` after every transition; watchers of
a job share one subscription. Pub/sub is a hint, not the record: a watcher
re-reads MongoDB on every hint and also on a timer, so a lost message (Redis
restart) only delays an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from common import keys, redisio

log = logging.getLogger(__name__)
_ANCHOR = keys.job_events("_gateway")  # keeps the connection subscribed when nobody watches


class EventHub:
    """Fans out job events from Redis to the local watchers."""

    def __init__(self, redis_url: str) -> None:
        self._redis = redisio.blocking_client(redis_url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._watchers: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the anchor channel and start reading."""
        await self._pubsub.subscribe(_ANCHOR)
        self._reader = asyncio.create_task(self._read(), name="event-hub")

    async def stop(self) -> None:
        """Stop reading and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that receives the job's new states while the context is open."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        channel = keys.job_events(job_id)
        first = not self._watchers[channel]
        self._watchers[channel].add(queue)
        try:
            if first:
                with contextlib.suppress(RedisError):
                    await self._pubsub.subscribe(channel)
            yield queue
        finally:
            self._watchers[channel].discard(queue)
            if not self._watchers[channel]:
                del self._watchers[channel]
                with contextlib.suppress(RedisError):
                    await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except RedisError as exc:
                log.warning("job event subscription lost; retrying: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            for queue in tuple(self._watchers.get(message["channel"], ())):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(str(message["data"]))
