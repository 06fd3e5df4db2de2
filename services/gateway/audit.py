"""The audit log: one entry per call, written by a background batcher, never on the request path.

`record` only puts the entry on a bounded queue (put_nowait); a full queue drops
the entry, counts it and logs at most once per interval: auditing never blocks or
fails a call. The writer drains the queue into one document per write, a bucket of
up to `auditlog.MAX_ENTRIES` entries (common.auditlog says why). It also flushes API
keys' `last_used_at`, which the authenticator collects in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from pymongo.asynchronous.collection import AsyncCollection

from common import auditlog
from common.mongo import Doc

log = logging.getLogger(__name__)

WRITTEN = Counter("flickrhub_audit_written_total", "Audit entries written to MongoDB.")
DROPPED = Counter("flickrhub_audit_dropped_total", "Audit entries dropped (queue full or write failed).")

MAX_BATCH = auditlog.MAX_ENTRIES
DROP_LOG_INTERVAL_S = 10.0


class AuditWriter:
    """Bounded queue in front of `audit_log`; start() runs the writer task, stop() flushes."""

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        max_queue: int,
        batch_ms: float,
        on_flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._collection = collection
        self._queue: asyncio.Queue[Doc] = asyncio.Queue(maxsize=max_queue)
        self._batch_s = batch_ms / 1000
        self._on_flush = on_flush
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self.dropped = 0
        self.written = 0

    def record(
        self,
        *,
        rpc: str,
        key_id: str,
        client_ip: str,
        outcome: str,
        latency_ms: float,
        user_id_hashes: list[str],
        auth: str,
        reason: str = "",
    ) -> None:
        """Queue one entry (never blocks; drops and counts when full)."""
        entry: dict[str, Any] = {
            "created_at": datetime.now(UTC),
            "rpc": rpc,
            "key_id": key_id,
            "client_ip": client_ip,
            "user_id_hash": user_id_hashes[0] if user_id_hashes else "",
            "outcome": outcome,
            "latency_ms": round(latency_ms, 3),
            "auth": auth,
        }
        if reason:
            entry["reason"] = reason
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._drop(1, "queue full")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        DROPPED.inc(count)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("audit entries dropped (%s); %d dropped so far", why, self.dropped)

    def start(self) -> None:
        """Run the writer in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self._batch_s)  # let a batch gather: one bucket, not one document per call
            await self._write(batch)

    async def _write(self, batch: list[Doc]) -> None:
        while len(batch) < MAX_BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        try:
            await self._collection.insert_one(auditlog.bucket(batch))
            self.written += len(batch)
            WRITTEN.inc(len(batch))
        except Exception as exc:  # a store outage must not kill the writer; the entries are counted lost
            self._drop(len(batch), f"write failed: {type(exc).__name__}")
        if self._on_flush is not None:
            try:
                await self._on_flush()
            except Exception as exc:  # last_used_at is best effort
                log.warning("last_used_at flush failed: %s", type(exc).__name__)

    async def flush(self) -> None:
        """Write everything queued now (tests and shutdown)."""
        while not self._queue.empty():
            await self._write([self._queue.get_nowait()])

    async def stop(self) -> None:
        """Stop the writer task and flush what is queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
