"""Gets and Puts of many jobs share one message to the cache service.

An operation waits at most `window_s` for others (or until `max_ops` of them, or
MAX_BATCH_BYTES of values, are waiting); then the batch goes out as one message on a
long-lived ExchangeStream (or, with `stream=False`, one Exchange call). While a batch
is still unanswered the next one keeps gathering (up to `max_ops`) and leaves when the
answer comes: a busy cache service answers later, so it gets fewer, larger batches.

The service answers each batch with one message, in order. Every operation resolves
to its CacheOpResult, or to None (a miss) when the cache did not answer within
`timeout_s` of its batch leaving, the stream broke, or the service refused the batch.

Each operation carries the trace context current when it was made (the job's cache
lookup or store span), so the service records its side in that job's trace. The
channel itself is not traced: a batch belongs to no single job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from typing import Any

import grpc
from opentelemetry import trace

from common.service import CHANNEL_OPTIONS
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

# Defaults: an operation waits at most 5 ms for company; a batch holds at most 64 operations
# (the service takes 256) and about 4 MiB of values (messages may be 16 MiB).
WINDOW_S = 0.005
MAX_OPS = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024

Result = cache_pb2.CacheOpResult | None


class _Sent:
    """A batch on its way: its operations' ids until answered, expired or lost."""

    __slots__ = ("ids", "timer")

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.timer: asyncio.TimerHandle | None = None


class CacheBatcher:
    """Batches cache operations onto one stream to the cache service."""

    def __init__(
        self,
        addr: str,
        timeout_s: float,
        window_s: float = WINDOW_S,
        max_ops: int = MAX_OPS,
        stream: bool = True,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._timeout = timeout_s
        self._window = window_s
        self._max_ops = max_ops
        self._stream = stream
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Result]] = {}
        self._batch = cache_pb2.CacheBatchRequest()
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: _Sent | None = None
        self._deferred = False  # the window ended while a batch was unanswered
        self._outbox: asyncio.Queue[tuple[cache_pb2.CacheBatchRequest, _Sent]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def get(self, method: str, params: dict[str, str], token: str) -> asyncio.Future[Result]:
        """Queue a Get; the future resolves to its result or None."""
        op = self._batch.ops.add()
        key = op.get.key
        key.method, key.token_id_hash = method, token
        key.params.update(params)
        return self._queued(op, 0)

    def put(self, method: str, params: dict[str, str], token: str, value: bytes) -> asyncio.Future[Result]:
        """Queue a Put (the method's default TTL); the future resolves to its result or None."""
        op = self._batch.ops.add()
        key = op.put.key
        key.method, key.token_id_hash = method, token
        key.params.update(params)
        op.put.value = value
        return self._queued(op, len(value))

    async def close(self) -> None:
        """Answer every waiting operation with None, end the stream and close the channel."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiting.clear()
        for task in [self._writer, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._channel.close()

    def _queued(self, op: cache_pb2.CacheOp, size: int) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        op.id = next(self._ids)
        span = trace.get_current_span().get_span_context()
        if span.trace_flags.sampled and span.is_valid:
            op.trace_id = span.trace_id.to_bytes(16, "big")
            op.span_id = span.span_id
            op.sampled = True
        waiter: asyncio.Future[Result] = loop.create_future()
        if self._closed:
            del self._batch.ops[-1]
            waiter.set_result(None)
            return waiter
        self._waiting[op.id] = waiter
        self._bytes += size
        if len(self._batch.ops) >= self._max_ops or self._bytes >= MAX_BATCH_BYTES:
            self._flush(full=True)
        elif self._timer is None and not self._deferred:
            self._timer = loop.call_later(self._window, self._flush)
        return waiter

    def _flush(self, full: bool = False) -> None:
        """Send what is waiting, unless a batch is still unanswered (then its answer sends this one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch.ops:
            return
        if self._in_flight is not None and not full:
            self._deferred = True
            return
        self._deferred = False
        batch, self._batch, self._bytes = self._batch, cache_pb2.CacheBatchRequest(), 0
        sent = _Sent([op.id for op in batch.ops])
        sent.timer = asyncio.get_running_loop().call_later(self._timeout, self._finish, sent, None)
        self._in_flight = sent
        if not self._stream:
            self._spawn(self._exchange(batch, sent))
            return
        self._outbox.put_nowait((batch, sent))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name="cache-batch-writer")

    def _finish(self, sent: _Sent, response: cache_pb2.CacheBatchResponse | None) -> None:
        """Resolve a batch's operations (None for every one without an answer), once."""
        if sent.timer is not None:
            sent.timer.cancel()
            sent.timer = None
        if response is not None:
            for result in response.results:
                waiter = self._waiting.pop(result.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(result)
        for op_id in sent.ids:
            waiter = self._waiting.pop(op_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        sent.ids = []
        if self._in_flight is sent:
            self._in_flight = None
            if self._deferred and not self._closed:
                self._flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exchange(self, batch: cache_pb2.CacheBatchRequest, sent: _Sent) -> None:
        response = None
        try:
            response = await self._stub.Exchange(batch, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("cache batch failed: %s", exc.code().name)
        self._finish(sent, response)

    async def _write_forever(self) -> None:
        """Send each batch on the current stream, opening one when there is none."""
        call: Any = None
        unanswered: collections.deque[_Sent] = collections.deque()
        while True:
            batch, sent = await self._outbox.get()
            if not sent.ids:
                continue  # expired while queued
            if call is None or call.done():
                call = self._stub.ExchangeStream()
                unanswered = collections.deque()
                self._spawn(self._read(call, unanswered))
            unanswered.append(sent)
            try:
                await call.write(batch)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                log.warning("cache stream broke: %s", type(exc).__name__)
                call.cancel()
                self._finish(sent, None)

    async def _read(self, call: Any, unanswered: collections.deque[_Sent]) -> None:
        """Hand each answer to its batch; when the stream ends, every unanswered operation is a miss."""
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if unanswered:
                    self._finish(unanswered.popleft(), response)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.warning("cache stream ended: %s", exc.code().name)
        finally:
            while unanswered:
                self._finish(unanswered.popleft(), None)
