"""The worker's view of the cache service: a slow or absent cache is a miss, never a failure."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from common.service import insecure_channel
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from worker import metrics

log = logging.getLogger(__name__)


class CacheClient:
    """Get/put Flickr answers through the cache service."""

    def __init__(self, addr: str, timeout_s: float) -> None:
        self._channel = insecure_channel(addr)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._timeout = timeout_s

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def get(self, method: str, params: dict[str, str], token: str) -> dict[str, Any] | None:
        """The cached answer, or None on a miss, an error or a timeout."""
        key = cache_pb2.CacheKey(method=method, params=params, token_id_hash=token)
        try:
            resp = await self._stub.Get(cache_pb2.CacheGetRequest(key=key), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            metrics.CACHE.labels(outcome="error").inc()
            log.warning("cache get failed: %s", exc.code().name)
            return None
        if not resp.hit:
            metrics.CACHE.labels(outcome="miss").inc()
            return None
        try:
            value = json.loads(resp.value)
        except ValueError:
            metrics.CACHE.labels(outcome="error").inc()
            return None
        metrics.CACHE.labels(outcome="hit").inc()
        return value if isinstance(value, dict) else None

    async def put(self, method: str, params: dict[str, str], token: str, value: dict[str, Any]) -> None:
        """Store an answer; failures are logged and ignored."""
        key = cache_pb2.CacheKey(method=method, params=params, token_id_hash=token)
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            await self._stub.Put(cache_pb2.CachePutRequest(key=key, value=body), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("cache put failed: %s", exc.code().name)

    async def warm_candidates(
        self, top: int, min_requests: int, within_s: int, limit: int, claim_s: int
    ) -> list[cache_pb2.WarmCandidate]:
        """Popular entries near expiry, claimed for this worker; none on an error."""
        request = cache_pb2.CacheWarmCandidatesRequest(
            top=top,
            min_requests=min_requests,
            refresh_within_seconds=within_s,
            limit=limit,
            claim_seconds=claim_s,
        )
        try:
            response = await self._stub.WarmCandidates(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("cache warm candidates failed: %s", exc.code().name)
            return []
        return list(response.candidates)

    async def invalidate(self, token: str) -> None:
        """Drop a token's cached reads after it wrote through FlickrHub; failures are logged."""
        try:
            await self._stub.Invalidate(
                cache_pb2.CacheInvalidateRequest(token_id_hash=token), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("cache invalidate failed: %s", exc.code().name)
