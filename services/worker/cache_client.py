"""The worker's view of the cache service: a slow or absent cache is a miss, never a failure.

Gets and Puts go through `CacheBatcher`: the operations of every job this worker runs
within a couple of milliseconds share one message on one stream, and the cache
service answers them with one Redis round trip. Invalidate and WarmCandidates are
rare and stay single (traced) calls.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from common import jsontext
from common.service import insecure_channel
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from worker import metrics
from worker.cache_batcher import MAX_OPS, WINDOW_S, CacheBatcher

log = logging.getLogger(__name__)

_HIT = metrics.CACHE.labels(outcome="hit")
_MISS = metrics.CACHE.labels(outcome="miss")
_ERROR = metrics.CACHE.labels(outcome="error")


class CacheClient:
    """Get/put Flickr answers through the cache service."""

    def __init__(
        self,
        addr: str,
        timeout_s: float,
        window_s: float = WINDOW_S,
        max_batch: int = MAX_OPS,
        stream: bool = True,
    ) -> None:
        self._channel = insecure_channel(addr)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._timeout = timeout_s
        self._batcher = CacheBatcher(addr, timeout_s, window_s, max_batch, stream)

    async def close(self) -> None:
        """Close the channels (operations still waiting answer as misses)."""
        await self._batcher.close()
        await self._channel.close()

    async def get(self, method: str, params: dict[str, str], token: str) -> dict[str, Any] | None:
        """The cached answer, or None on a miss, an error or a timeout."""
        result = await self._batcher.get(method, params, token)
        if result is None or result.WhichOneof("result") != "get":
            _ERROR.inc()
            if result is not None:
                log.warning("cache get refused: %s", result.error.message)
            return None
        if not result.get.hit:
            _MISS.inc()
            return None
        try:
            value = json.loads(result.get.value)
        except ValueError:
            _ERROR.inc()
            return None
        _HIT.inc()
        return value if isinstance(value, dict) else None

    async def put(self, method: str, params: dict[str, str], token: str, value: dict[str, Any]) -> None:
        """Store an answer; failures are logged and ignored."""
        body = jsontext.dumps(value).encode()
        result = await self._batcher.put(method, params, token, body)
        if result is None:
            log.warning("cache put failed: no answer")
        elif result.WhichOneof("result") == "error":
            log.warning("cache put refused: %s", result.error.message)

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
