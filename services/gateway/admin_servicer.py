"""AdminService: the depth of every queue FlickrHub keeps, and cache invalidation."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import grpc
from redis.exceptions import RedisError

from common import keys, redisio
from common.errors import FieldViolation, InvalidArgument, Unavailable
from common.flickr_guard import FlickrGuard
from flickrhub.v1 import admin_pb2, admin_pb2_grpc, cache_pb2
from gateway.validation import METHOD_RE

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from flickrhub.v1.cache_pb2_grpc import CacheServiceAsyncStub

# A token id as ListTokens shows it (common.tokens.token_id_hash); the cache service takes 16-64.
TOKEN_ID_RE = re.compile(r"[0-9a-f]{16,64}")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Operator views of the queues."""

    def __init__(
        self,
        redis: redisio.Redis,
        guard: FlickrGuard | None = None,
        cache: CacheServiceAsyncStub | None = None,
        cache_timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._guard = guard
        self._cache = cache
        self._cache_timeout_s = cache_timeout_s

    async def GetQueueStats(
        self, request: admin_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.QueueStats:
        """Work streams, token queues, retries, dead letters and webhooks."""
        if not 0 <= request.top_tokens <= 100:
            raise InvalidArgument("invalid top_tokens", [FieldViolation("top_tokens", "0..100")])
        top = request.top_tokens or 10
        try:
            return await self._stats(top)
        except RedisError as exc:
            raise Unavailable("queue store unavailable") from exc

    async def InvalidateCache(
        self, request: admin_pb2.InvalidateCacheRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.InvalidateCacheResponse:
        """Move the token's (or token+method's) cache generation: its cached answers are gone at once."""
        bad = []
        if not TOKEN_ID_RE.fullmatch(request.token_id):
            bad.append(FieldViolation("token_id", "required: the token id (16-64 lowercase hex characters)"))
        if request.method and not METHOD_RE.match(request.method):
            bad.append(FieldViolation("method", "flickr.<namespace>.<name>, or empty for every method"))
        if bad:
            raise InvalidArgument("invalid InvalidateCacheRequest", bad)
        if self._cache is None:
            raise Unavailable("no cache service configured: nothing was invalidated")
        try:
            answer = await self._cache.Invalidate(
                cache_pb2.CacheInvalidateRequest(token_id_hash=request.token_id, method=request.method),
                timeout=self._cache_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"cache service: {exc.code().name}; nothing was invalidated") from exc
        return admin_pb2.InvalidateCacheResponse(
            token_id=request.token_id, method=request.method, generation=answer.generation
        )

    async def _stats(self, top: int) -> admin_pb2.QueueStats:
        stats = admin_pb2.QueueStats()
        for target in keys.TARGETS:
            stream = keys.work_stream(target)
            length = await self._redis.xlen(stream)
            pending, lag = 0, 0
            for group in (
                await self._redis.xinfo_groups(stream) if length or await self._redis.exists(stream) else []
            ):
                if group["name"] == keys.WORKER_GROUP:
                    pending = int(group.get("pending", 0))
                    lag = int(group.get("lag") or 0)
            stats.work_streams.add(target=target, length=length, pending=pending, lag=lag)
        tokens = [str(t) for t in await self._redis.smembers(keys.ACTIVE_TOKENS)]
        stats.active_tokens = len(tokens)
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            for stream in keys.token_streams(token):
                pipe.xlen(stream)
        lengths = [int(n) for n in await pipe.execute()]
        width = len(keys.PRIORITIES)
        totals = [sum(lengths[i * width : (i + 1) * width]) for i in range(len(tokens))]
        depths = sorted(zip(tokens, totals, strict=True), key=lambda item: -item[1])
        for token, depth in depths[:top]:
            stats.token_queues.add(token_id_hash=token, depth=int(depth))
        stats.delayed = await self._redis.zcard(keys.DELAYED)
        stats.dead_letters = await self._redis.xlen(keys.DEAD_LETTERS)
        stats.pending_webhooks = await self._redis.xlen(keys.WEBHOOKS)
        if self._guard is not None:
            now_ms = await self._guard.flickr_breaker.redis_time_ms()
            for breaker in (self._guard.flickr_breaker, self._guard.key_breaker):
                raw = await breaker.snapshot()
                state = raw.get("state", "closed")
                retry = max(0, int(float(raw.get("until", "0")) - now_ms)) if state == "open" else 0
                stats.breakers.add(
                    name=breaker.name,
                    state=state,
                    retry_after_ms=retry,
                    opened_total=int(raw.get("opened_total", 0)),
                )
                stats.paused = stats.paused or state == "open"
        return stats
