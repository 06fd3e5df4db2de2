"""CacheService: validated get/put/invalidate/stats over the cache store.

A Redis outage on Get answers a miss: the worker then calls Flickr, so a cache
outage degrades to misses and never fails a job. Put and Invalidate answer
UNAVAILABLE so the caller knows nothing was stored or dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import trace
from redis.exceptions import RedisError

from cache import metrics
from cache.store import CacheStore, Stats, method_label
from common import telemetry
from common.errors import FieldViolation, InvalidArgument, Unavailable
from common.flickr_methods import is_search, is_write
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

# fullmatch, not match: `$` also matches before a trailing newline.
METHOD_RE = re.compile(r"flickr(\.[A-Za-z0-9_]+){2,}")
METHOD_MAX = 128
TOKEN_RE = re.compile(r"[0-9a-f]{16,64}")
MAX_PARAMS = 64
MAX_PARAM_KEY = 64
MAX_PARAM_VALUE = 4096
MAX_VALUE_BYTES = 1024 * 1024

Context = grpc.aio.ServicerContext[Any, Any]


def method_class(method: str) -> str:
    """write, search or read: the class that decides the TTL."""
    return "write" if is_write(method) else "search" if is_search(method) else "read"


def method_violations(method: str, field: str) -> list[FieldViolation]:
    """A Flickr method name: flickr.<namespace>.<name>, at most 128 characters."""
    if len(method) > METHOD_MAX or not METHOD_RE.fullmatch(method):
        return [FieldViolation(field, f"flickr.<namespace>.<name>, at most {METHOD_MAX} characters")]
    return []


def token_violations(token: str, field: str) -> list[FieldViolation]:
    """The token id hash that scopes every entry: required."""
    if not TOKEN_RE.fullmatch(token):
        return [FieldViolation(field, "required: 16-64 lowercase hex characters")]
    return []


def params_violations(params: Mapping[str, str], field: str) -> list[FieldViolation]:
    """At most 64 params, keys of 1-64 characters, values of at most 4096."""
    if len(params) > MAX_PARAMS:
        return [FieldViolation(field, f"at most {MAX_PARAMS} entries")]
    return [
        FieldViolation(
            f"{field}[{k[:MAX_PARAM_KEY]}]",
            f"keys are 1-{MAX_PARAM_KEY} characters, values at most {MAX_PARAM_VALUE}",
        )
        for k, v in params.items()
        if not 0 < len(k) <= MAX_PARAM_KEY or len(v) > MAX_PARAM_VALUE
    ]


def key_violations(key: cache_pb2.CacheKey) -> list[FieldViolation]:
    """Every problem with a cache key."""
    return [
        *method_violations(key.method, "key.method"),
        *params_violations(key.params, "key.params"),
        *token_violations(key.token_id_hash, "key.token_id_hash"),
    ]


def _check(bad: list[FieldViolation], what: str) -> None:
    if bad:
        raise InvalidArgument(f"invalid {what}: " + ", ".join(v.field for v in bad), bad)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """The gRPC face of the cache store."""

    def __init__(self, store: CacheStore) -> None:
        self._store = store

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
