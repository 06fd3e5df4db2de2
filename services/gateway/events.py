"""Job state-change notifications for WatchJob: one Redis pub/sub connection per gateway.

Workers publish every batch of transitions as one message on `keys.JOB_EVENTS`,
which every gateway subscribes to; each hands the hints of jobs watched here to
their watchers and drops the rest (a JSON parse per batch, a dict lookup per
job). Pub/sub is a hint, not the record: a watcher re-reads the job on every
hint and also on a timer, so a lost message (Redis restart) only delays an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from common import keys, redisio

log = logging.getLogger(__name__)


class EventHub:
    """Fans out job events from Redis to the local watchers."""

    def __init__(self, redis_url: str) -> None:
        self._redis = redisio.blocking_client(redis_url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._watchers: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to the job events channel and start reading."""
        await self._pubsub.subscribe(keys.JOB_EVENTS)
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
        """A queue that receives the job's new states (JSON hints) while the context is open."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self._watchers[job_id].add(queue)
        try:
            yield queue
        finally:
            self._watchers[job_id].discard(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except RedisError as exc:
                log.warning("job event subscription lost; retrying: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message" or not self._watchers:
                continue
            self.deliver(str(message["data"]))

    def deliver(self, data: str) -> None:
        """Hand each hint of a published batch to the watchers of its job; malformed batches are dropped."""
        try:
            hints = json.loads(data)
        except ValueError:
            log.warning("dropped a malformed job events message")
            return
        if not isinstance(hints, list):
            return
        for hint in hints:
            job_id = hint.get("job_id") if isinstance(hint, dict) else None
            for queue in tuple(self._watchers.get(job_id, ())) if isinstance(job_id, str) else ():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(json.dumps(hint))
