"""Redis under memory pressure: the cache evicts (allkeys-lru), the queue never does (noeviction)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from redis.exceptions import OutOfMemoryError

from cache.app import CacheApp
from common import keys, redisio
from common.settings import Settings
from devstack.stores import redis_server
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

TOKEN = "c" * 32
MIB = 1024 * 1024


async def _fill_queue(redis: redisio.Redis, jobs: int) -> None:
    """Queue state as the gateway leaves it: a token stream, the active set, delayed retries."""
    pipe = redis.pipeline(transaction=False)
    for i in range(jobs):
        pipe.xadd(keys.token_stream(TOKEN), {"job_id": f"{i:032x}", "method": "flickr.photos.getInfo"})
        pipe.zadd(keys.DELAYED, {json.dumps({"job_id": f"{i:032x}"}): i})
    pipe.sadd(keys.ACTIVE_TOKENS, TOKEN)
    await pipe.execute()


async def _queue_intact(redis: redisio.Redis, jobs: int) -> None:
    assert await redis.xlen(keys.token_stream(TOKEN)) == jobs
    assert await redis.zcard(keys.DELAYED) == jobs
    assert await redis.sismember(keys.ACTIVE_TOKENS, TOKEN)


@pytest_asyncio.fixture
async def cache_app(cache_redis_url: str, cache_redis: Any) -> AsyncIterator[CacheApp]:
    settings = Settings.from_env(env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=cache_redis_url)
    app = CacheApp(settings)
    await app.start()
    yield app
    await app.stop(1.0)


async def test_filling_the_cache_past_its_cap_evicts_cache_entries_and_never_queue_data(
    redis: redisio.Redis, cache_redis: redisio.Redis, cache_app: CacheApp
) -> None:
    # The session's two servers, as tests/conftest.py starts them: queue noeviction, cache 16 MiB LRU.
    assert (await redis.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
    cache_config = await cache_redis.config_get("maxmemory*")
    assert cache_config["maxmemory-policy"] == "allkeys-lru"
    cap = int(str(cache_config["maxmemory"]))
    assert 0 < cap <= 64 * MIB
    queue_evicted_before = int((await redis.info("stats"))["evicted_keys"])
    await _fill_queue(redis, 500)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{cache_app.port}") as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        answers = cap // MIB + 8  # well past the cap
        for i in range(answers):
            key = cache_pb2.CacheKey(
                method="flickr.photos.getInfo", params={"photo_id": str(i)}, token_id_hash=TOKEN
            )
            assert (await cache.Put(cache_pb2.CachePutRequest(key=key, value=bytes([i % 256]) * MIB))).stored
        stats = await cache.Stats(cache_pb2.CacheStatsRequest())
    assert stats.evicted_keys > 0 and stats.keys < answers
    assert stats.used_memory_bytes <= cap + MIB

    await _queue_intact(redis, 500)
    assert int((await redis.info("stats"))["evicted_keys"]) == queue_evicted_before


async def test_a_full_queue_redis_refuses_writes_instead_of_evicting(tmp_path: Path) -> None:
    server = redis_server("queue", tmp_path / "queue").start()
    redis = redisio.client(f"redis://127.0.0.1:{server.port}/0")
    try:
        await _fill_queue(redis, 200)
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory", str(used + 2 * MIB))
        written, refused = 0, None
        for i in range(100_000):  # ~6 MiB: more than the room left
            try:
                await redis.set(f"{keys.PREFIX}:fill:{i}", "x" * 64)
            except OutOfMemoryError as exc:
                refused = exc
                break
            written += 1
        assert refused is not None and "maxmemory" in str(refused) and written > 0
        await _queue_intact(redis, 200)
        assert await redis.dbsize() == 3 + written  # stream, delayed set, active set, every accepted key
        assert int((await redis.info("stats"))["evicted_keys"]) == 0
    finally:
        await redis.aclose()
        server.stop()
