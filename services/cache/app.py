"""The cache service process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from cache import metrics
from cache.servicer import CacheServicer
from cache.store import CacheStore
from common import redisio
from common.service import GrpcServer, bootstrap, run_service, start_metrics
from common.settings import Settings
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger(__name__)

STATS_FLUSH_S = 1.0
# How often the gauges (per-method hit ratio, evictions, memory) are read back from Redis.
GAUGES_EVERY = 5


class CacheApp:
    """CacheService on its own Redis connection; `port` and `metrics_port` are known after start()."""

    name = "cache"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # One connection per call the store lets run at once (CACHE_REDIS_MAX_IN_FLIGHT).
        max_connections = settings.cache_redis_max_in_flight
        self.redis = redisio.client(settings.cache_redis_url, max_connections=max_connections, decode=False)
        self.store = CacheStore(self.redis, settings)
        service = cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name
        self.grpc = GrpcServer(
            [service],
            settings.bind_host,
            settings.cache_port,
            # Batches belong to no single trace: each operation's span joins its own (cache.batch).
            untraced_methods=[f"/{service}/Exchange", f"/{service}/ExchangeStream"],
        )
        self.servicer = CacheServicer(self.store)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(self.servicer, self.grpc.server)
        self.port = self.grpc.port
        self.metrics_port = -1
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve, export metrics, and keep the shared hit/miss counters current."""
        try:
            await self.store.load_scripts()
        except RedisError as exc:
            # Serve anyway: Gets answer misses until Redis is back, and the scripts load on first use.
            log.warning("cache redis unavailable at start: %s", type(exc).__name__)
        await self.grpc.start()
        self.metrics_port = start_metrics(self.settings.cache_metrics_port)
        self._flusher = asyncio.create_task(self._flush_stats_forever(), name="cache-stats-flush")
        log.info("cache listening on %d", self.port)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, end the batch streams, finish in-flight calls, send the last counts, close Redis."""
        self.servicer.close_streams()
        await self.grpc.stop(grace)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._flush_stats()
        await self.store.close()
        await self.redis.aclose()

    async def _flush_stats_forever(self) -> None:
        # An idle replica would otherwise hold its last counts until its next call.
        tick = 0
        while True:
            await asyncio.sleep(STATS_FLUSH_S)
            await self._flush_stats()
            tick += 1
            try:
                if self.store.warming:
                    await self.store.maintain_hot()
                if tick % GAUGES_EVERY == 1:
                    await self.export_gauges()
            except RedisError as exc:
                log.warning("cache housekeeping skipped: %s", type(exc).__name__)

    async def export_gauges(self) -> None:
        """Per-method hit ratio (every replica's counts), evictions, memory and keys from Redis."""
        stats = await self.store.stats()
        metrics.EVICTED_KEYS.set(stats.evicted_keys)
        metrics.USED_MEMORY.set(stats.used_memory_bytes)
        metrics.STORED_KEYS.set(stats.keys)
        for method, (hits, misses) in stats.methods.items():
            if hits + misses:
                metrics.HIT_RATIO.labels(method).set(hits / (hits + misses))

    async def _flush_stats(self) -> None:
        try:
            await self.store.flush_stats()
        except RedisError as exc:
            log.warning("cache stats not flushed: %s", type(exc).__name__)


async def run(settings: Settings) -> None:
    """Run the cache service until SIGTERM."""
    bootstrap("cache", settings)
    await run_service(CacheApp(settings), settings)
