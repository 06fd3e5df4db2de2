"""CacheService: validated get/put/invalidate/stats over the cache store.

A Redis outage on Get answers a miss: the worker then calls Flickr, so a cache
outage degrades to misses and never fails a job. Put and Invalidate answer
UNAVAILABLE so the caller knows nothing was stored or dropped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import trace
from redis.exceptions import RedisError

from cache import metrics
from cache.store import CacheStore
from common import telemetry
from common.errors import FieldViolation, InvalidArgument, Unavailable
from common.flickr_methods import is_search, is_write
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

METHOD_RE = re.compile(r"^flickr(\.[A-Za-z][A-Za-z0-9]*){2,5}$")
TOKEN_RE = re.compile(r"^[0-9a-f]{16,64}$")
PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MAX_PARAMS = 64
MAX_VALUE_BYTES = 1024 * 1024


def method_class(method: str) -> str:
    """write, search or read: the class that decides the TTL."""
    return "write" if is_write(method) else "search" if is_search(method) else "read"


def key_violations(key: cache_pb2.CacheKey, prefix: str = "key.") -> list[FieldViolation]:
    """Every problem with a cache key."""
    bad: list[FieldViolation] = []
    if not METHOD_RE.match(key.method):
        bad.append(FieldViolation(f"{prefix}method", "must look like flickr.<namespace>.<name>"))
    if not TOKEN_RE.match(key.token_id_hash):
        bad.append(FieldViolation(f"{prefix}token_id_hash", "required: 16-64 lowercase hex characters"))
    bad += _param_violations(key.params, prefix)
    return bad


def _param_violations(params: Mapping[str, str], prefix: str) -> list[FieldViolation]:
    if len(params) > MAX_PARAMS:
        return [FieldViolation(f"{prefix}params", f"at most {MAX_PARAMS} entries")]
    return [
        FieldViolation(
            f"{prefix}params[{k[:64]}]", "keys are 1-64 of A-Z a-z 0-9 _; values at most 4096 characters"
        )
        for k, v in params.items()
        if not PARAM_KEY_RE.match(k) or len(v) > 4096
    ]


def _check(bad: list[FieldViolation], what: str) -> None:
    if bad:
        raise InvalidArgument(f"invalid {what}: " + "; ".join(v.field for v in bad), bad)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """The gRPC face of the cache store."""

    def __init__(self, store: CacheStore) -> None:
        self._store = store

    async def Get(
        self, request: cache_pb2.CacheGetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.CacheGetResponse:
        """A hit with the answer, or a miss (also when the cache Redis is down)."""
        key = request.key
        _check(key_violations(key), "CacheGetRequest")
        klass = method_class(key.method)
        started = time.perf_counter()
        try:
            hit = await self._store.get(key.method, key.params, key.token_id_hash)
        except RedisError as exc:
            log.warning("cache redis unavailable on get: %s", type(exc).__name__)
            metrics.REQUESTS.labels("get", klass, "error").inc()
            return cache_pb2.CacheGetResponse(hit=False)
        metrics.OP_SECONDS.labels("get").observe(time.perf_counter() - started)
        metrics.REQUESTS.labels("get", klass, "hit" if hit else "miss").inc()
        trace.get_current_span().set_attribute(telemetry.ATTR_CACHE_HIT, hit is not None)
        if hit is None:
            return cache_pb2.CacheGetResponse(hit=False)
        return cache_pb2.CacheGetResponse(hit=True, value=hit.value, ttl_seconds=hit.ttl_s)

    async def Put(
        self, request: cache_pb2.CachePutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.CachePutResponse:
        """Store an answer unless its method is never cached."""
        bad = key_violations(request.key)
        if len(request.value) > MAX_VALUE_BYTES:
            bad.append(FieldViolation("value", f"at most {MAX_VALUE_BYTES} bytes"))
        if request.ttl_seconds < 0:
            bad.append(FieldViolation("ttl_seconds", "0 (the method's default) or positive"))
        _check(bad, "CachePutRequest")
        key = request.key
        klass = method_class(key.method)
        ttl = self._store.ttl_for(key.method, request.ttl_seconds)
        if ttl == 0:
            metrics.REQUESTS.labels("put", klass, "skipped").inc()
            return cache_pb2.CachePutResponse(stored=False)
        started = time.perf_counter()
        try:
            await self._store.put(key.method, key.params, key.token_id_hash, request.value, ttl)
        except RedisError as exc:
            metrics.REQUESTS.labels("put", klass, "error").inc()
            raise Unavailable("cache store unavailable") from exc
        metrics.OP_SECONDS.labels("put").observe(time.perf_counter() - started)
        metrics.REQUESTS.labels("put", klass, "stored").inc()
        return cache_pb2.CachePutResponse(stored=True, ttl_seconds=ttl)

    async def Invalidate(
        self, request: cache_pb2.CacheInvalidateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.CacheInvalidateResponse:
        """Drop a token's entries (or one method's) at once."""
        bad = []
        if not TOKEN_RE.match(request.token_id_hash):
            bad.append(FieldViolation("token_id_hash", "required: 16-64 lowercase hex characters"))
        if request.method and not METHOD_RE.match(request.method):
            bad.append(FieldViolation("method", "must look like flickr.<namespace>.<name>"))
        _check(bad, "CacheInvalidateRequest")
        try:
            generation = await self._store.invalidate(request.token_id_hash, request.method)
        except RedisError as exc:
            raise Unavailable("cache store unavailable") from exc
        metrics.REQUESTS.labels(
            "invalidate", method_class(request.method) if request.method else "all", "ok"
        ).inc()
        return cache_pb2.CacheInvalidateResponse(generation=generation)

    async def Stats(
        self, request: cache_pb2.CacheStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.CacheStatsResponse:
        """Counters shared by every replica, plus Redis' view."""
        try:
            return cache_pb2.CacheStatsResponse(**await self._store.stats())
        except RedisError as exc:
            raise Unavailable("cache store unavailable") from exc
