"""Group commit of job documents: submissions arriving within a few ms share one insert_many.

The job document is written before a submission is answered; on SecantusDB one
insert costs ~1.5 ms while insert_many amortises well, so concurrent callers
wait a couple of milliseconds and are written together.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from common.mongo import Doc

MAX_BATCH = 500


class InsertBatcher:
    """Collects documents and inserts them in batches; each caller awaits its own document's fate."""

    def __init__(self, collection: AsyncCollection[Doc], window_ms: float) -> None:
        self._collection = collection
        self._window = window_ms / 1000
        self._pending: list[tuple[Doc, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def insert(self, doc: Doc) -> None:
        """Insert `doc` with whatever else arrives in the window; raises what its own insert raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((doc, future))
        if len(self._pending) >= MAX_BATCH:
            self._flush_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._window, self._flush_now)
        await future

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._write(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _write(self, batch: list[tuple[Doc, asyncio.Future[None]]]) -> None:
        failed: dict[int, Exception] = {}
        try:
            await self._collection.insert_many([doc for doc, _ in batch], ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                failed[int(err["index"])] = RuntimeError(f"insert failed: {err.get('errmsg', 'unknown')}")
        except Exception as exc:
            failed = dict.fromkeys(range(len(batch)), exc)
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if index in failed:
                future.set_exception(failed[index])
            else:
                future.set_result(None)

    async def drain(self) -> None:
        """Write what is pending and wait for writes in flight (graceful shutdown)."""
        self._flush_now()
        if self._flushes:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._flushes)


def as_doc(value: Any) -> Doc:
    """Typing helper for documents built as dict literals."""
    return dict(value)
