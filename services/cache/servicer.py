"""CacheService: validated get/put/invalidate/stats over the cache store.

A Redis outage on Get answers a miss: the worker then calls Flickr, so a cache
outage degrades to misses and never fails a job. Put and Invalidate answer
UNAVAILABLE so the caller knows nothing was stored or dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from redis.exceptions import RedisError

from cache import metrics
from cache.batch import MAX_OPS, BatchHandler
from cache.store import CacheStore, Stats, method_label
from cache.validation import (
    MAX_VALUE_BYTES,
    key_violations,
    method_class,
    method_violations,
    token_violations,
)
from common import telemetry
from common.errors import FieldViolation, InvalidArgument, Unavailable
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


def _check(bad: list[FieldViolation], what: str) -> None:
    if bad:
        raise InvalidArgument(f"invalid {what}: " + ", ".join(v.field for v in bad), bad)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """The gRPC face of the cache store."""

    def __init__(self, store: CacheStore) -> None:
        self._store = store
        self._batches = BatchHandler(store)
        self._streams: set[asyncio.Task[Any]] = set()
        self._busy: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def Exchange(
        self, request: cache_pb2.CacheBatchRequest, context: Context
    ) -> cache_pb2.CacheBatchResponse:
        """Many Gets and Puts in one call and one Redis round trip, each answered as its single RPC."""
        if len(request.ops) > MAX_OPS:
            # Served without the error interceptor (untraced): refused here, as the stream does.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_OPS} operations per batch")
        return await self._batches.run(request.ops, "Exchange")

    async def ExchangeStream(
        self, request_iterator: AsyncIterator[cache_pb2.CacheBatchRequest], context: Context
    ) -> AsyncIterator[cache_pb2.CacheBatchResponse]:
        """Exchange over one stream: an answer per request message, in order, until either side ends it."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            while not self._closing:
                try:
                    request = await anext(request_iterator)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not self._closing:
                        raise
                    task.uncancel()  # close_streams: end the stream with OK, the caller opens another
                    return
                if len(request.ops) > MAX_OPS:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_OPS} operations per batch"
                    )
                self._busy.add(task)
                try:
                    response = await self._batches.run(request.ops, "ExchangeStream")
                finally:
                    self._busy.discard(task)
                yield response
        finally:
            self._streams.discard(task)

    def close_streams(self) -> None:
        """Stopping: each stream ends once its running batch is answered; idle ones end now."""
        self._closing = True
        for task in self._streams - self._busy:
            task.cancel()

    async def Get(self, request: cache_pb2.CacheGetRequest, context: Context) -> cache_pb2.CacheGetResponse:
        """A hit with the answer, or a miss (also when the cache Redis is down)."""
        key = request.key
        _check(key_violations(key), "CacheGetRequest")
        klass = method_class(key.method)
        span = trace.get_current_span()
        span.set_attribute(telemetry.ATTR_METHOD, key.method)
        hit = None
        with metrics.timed("get"):
            if klass == "write":
                self._store.count("misses", key.method)  # never stored, so no need to ask Redis
                outcome = "skipped"
            else:
                try:
                    hit = await self._store.get(key.method, key.params, key.token_id_hash)
                    outcome = "hit" if hit else "miss"
                except RedisError as exc:
                    log.warning("cache redis unavailable on get, answering a miss: %s", type(exc).__name__)
                    outcome = "error"
        metrics.REQUESTS.labels("get", klass, outcome).inc()
        metrics.LOOKUPS.labels(method_label(key.method), "miss" if outcome == "skipped" else outcome).inc()
        span.set_attribute(telemetry.ATTR_CACHE_HIT, hit is not None)
        if hit is None:
            return cache_pb2.CacheGetResponse(hit=False)
        return cache_pb2.CacheGetResponse(hit=True, value=hit.value, ttl_seconds=hit.ttl_s)

    async def Put(self, request: cache_pb2.CachePutRequest, context: Context) -> cache_pb2.CachePutResponse:
        """Store an answer unless its method is never cached."""
        bad = key_violations(request.key)
        if len(request.value) > MAX_VALUE_BYTES:
            bad.append(FieldViolation("value", f"at most {MAX_VALUE_BYTES} bytes"))
        if request.ttl_seconds < 0:
            bad.append(FieldViolation("ttl_seconds", "0 (the method's default) or positive"))
        _check(bad, "CachePutRequest")
        key = request.key
        klass = method_class(key.method)
        trace.get_current_span().set_attribute(telemetry.ATTR_METHOD, key.method)
        ttl = self._store.ttl_for(key.method, request.ttl_seconds)
        if ttl == 0:
            metrics.REQUESTS.labels("put", klass, "skipped").inc()
            return cache_pb2.CachePutResponse(stored=False)
        with metrics.timed("put"):
            try:
                await self._store.put(key.method, key.params, key.token_id_hash, request.value, ttl)
            except RedisError as exc:
                metrics.REQUESTS.labels("put", klass, "error").inc()
                raise Unavailable("cache store unavailable: nothing was stored") from exc
        metrics.REQUESTS.labels("put", klass, "stored").inc()
        return cache_pb2.CachePutResponse(stored=True, ttl_seconds=ttl)

    async def Invalidate(
        self, request: cache_pb2.CacheInvalidateRequest, context: Context
    ) -> cache_pb2.CacheInvalidateResponse:
        """Drop a token's entries (or one method's) at once."""
        bad = token_violations(request.token_id_hash, "token_id_hash")
        if request.method:
            bad += method_violations(request.method, "method")
        _check(bad, "CacheInvalidateRequest")
        klass = method_class(request.method) if request.method else "all"
        if request.method:
            trace.get_current_span().set_attribute(telemetry.ATTR_METHOD, request.method)
        with metrics.timed("invalidate"):
            try:
                generation = await self._store.invalidate(request.token_id_hash, request.method)
            except RedisError as exc:
                metrics.REQUESTS.labels("invalidate", klass, "error").inc()
                raise Unavailable("cache store unavailable: nothing was invalidated") from exc
        metrics.REQUESTS.labels("invalidate", klass, "ok").inc()
        return cache_pb2.CacheInvalidateResponse(generation=generation)

    async def Stats(
        self, request: cache_pb2.CacheStatsRequest, context: Context
    ) -> cache_pb2.CacheStatsResponse:
        """Counters shared by every replica, plus Redis' view."""
        with metrics.timed("stats"):
            try:
                stats = await self._store.stats()
            except RedisError as exc:
                metrics.REQUESTS.labels("stats", "all", "error").inc()
                raise Unavailable("cache store unavailable") from exc
        metrics.REQUESTS.labels("stats", "all", "ok").inc()
        return stats_message(stats)

    async def WarmCandidates(
        self, request: cache_pb2.CacheWarmCandidatesRequest, context: Context
    ) -> cache_pb2.CacheWarmCandidatesResponse:
        """Popular entries near expiry, each claimed for this caller (none unless warming is on)."""
        bad = [
            FieldViolation(name, f"{low}..{high}")
            for name, low, high in _WARM_LIMITS
            if not low <= getattr(request, name) <= high
        ]
        _check(bad, "CacheWarmCandidatesRequest")
        if not self._store.warming:
            metrics.REQUESTS.labels("warm", "all", "skipped").inc()
            return cache_pb2.CacheWarmCandidatesResponse()
        with metrics.timed("warm"):
            try:
                found = await self._store.warm_candidates(
                    request.top,
                    request.min_requests,
                    request.refresh_within_seconds,
                    request.limit,
                    request.claim_seconds,
                )
            except RedisError as exc:
                metrics.REQUESTS.labels("warm", "all", "error").inc()
                raise Unavailable("cache store unavailable") from exc
        metrics.REQUESTS.labels("warm", "all", "ok").inc()
        metrics.WARM_CANDIDATES.inc(len(found))
        response = cache_pb2.CacheWarmCandidatesResponse()
        for c in found:
            response.candidates.add(
                key=cache_pb2.CacheKey(method=c.method, params=c.params, token_id_hash=c.token),
                ttl_seconds=c.ttl_s,
                requests=c.requests,
            )
        return response


_WARM_LIMITS = (
    ("top", 1, 1000),
    ("min_requests", 1, 1_000_000),
    ("refresh_within_seconds", 1, 86400),
    ("limit", 1, 1000),
    ("claim_seconds", 1, 3600),
)


def stats_message(stats: Stats) -> cache_pb2.CacheStatsResponse:
    """The Stats answer for the store's counts."""
    response = cache_pb2.CacheStatsResponse(
        hits=stats.hits,
        misses=stats.misses,
        puts=stats.puts,
        keys=stats.keys,
        used_memory_bytes=stats.used_memory_bytes,
        evicted_keys=stats.evicted_keys,
    )
    for method, (hits, misses) in stats.methods.items():
        response.methods.add(method=method, hits=hits, misses=misses)
    return response
