"""A cache service running in the test process, and the cache Redis's command counts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import grpc

from cache.app import CacheApp
from common import redisio
from common.settings import Settings
from flickrhub.v1 import cache_pb2_grpc

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from flickrhub.v1.cache_pb2_grpc import CacheServiceAsyncStub as Stub


@contextlib.asynccontextmanager
async def running_cache(settings: Settings) -> AsyncIterator[tuple[CacheApp, Stub]]:
    """A started CacheApp and a stub on a channel to it; both closed on exit."""
    app = CacheApp(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, cache_pb2_grpc.CacheServiceStub(channel)
    finally:
        await app.stop(1.0)


async def redis_commands(redis: redisio.Redis, ignore: Iterable[str] = ()) -> dict[str, int]:
    """Per-command calls since the last CONFIG RESETSTAT (commands run by Lua included), the test's own
    INFO and CONFIG RESETSTAT and any of `ignore` left out."""
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    skip = {"info", "config|resetstat", *ignore}
    return {name: n for name, n in calls.items() if name not in skip}
