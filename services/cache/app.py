"""The cache service process."""

from __future__ import annotations

from cache.servicer import CacheServicer
from cache.store import CacheStore
from common import redisio
from common.service import GrpcServer, bootstrap, run_service, start_metrics
from common.settings import Settings
from flickrhub.v1 import cache_pb2, cache_pb2_grpc


class CacheApp:
    """CacheService on its own Redis connection."""

    name = "cache"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redisio.client(settings.cache_redis_url, decode=False)
        self.grpc = GrpcServer(
            [cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name],
            settings.bind_host,
            settings.cache_port,
        )
        cache_pb2_grpc.add_CacheServiceServicer_to_server(
            CacheServicer(CacheStore(self.redis, settings)), self.grpc.server
        )
        self.port = self.grpc.port
        self.metrics_port = -1

    async def start(self) -> None:
        """Serve."""
        await self.grpc.start()
        self.metrics_port = start_metrics(self.settings.cache_metrics_port)

    async def stop(self, grace: float) -> None:
        """Finish in-flight calls, close Redis."""
        await self.grpc.stop(grace)
        await self.redis.aclose()


async def run(settings: Settings) -> None:
    """Run the cache service until SIGTERM."""
    bootstrap("cache", settings)
    await run_service(CacheApp(settings), settings)
