"""The cache service over a real gRPC channel on a real allkeys-lru Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cache.app import CacheApp
from common import keys
from common.settings import Settings
from devstack.stores import redis_server
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from tests.helpers.rich import bad_fields

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32


def _key(method: str = "flickr.photos.getInfo", token: str = TOKEN_A, **params: str) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(method=method, params=params or {"photo_id": "1"}, token_id_hash=token)


@pytest_asyncio.fixture
async def cache(
    cache_redis_url: str, cache_redis: Any
) -> AsyncIterator[cache_pb2_grpc.CacheServiceAsyncStub]:
    settings = Settings.from_env(
        env={},
        cache_port=0,
        cache_metrics_port=-1,
        cache_redis_url=cache_redis_url,
        cache_ttl_read_s=300,
        cache_ttl_search_s=60,
    )
    app = CacheApp(settings)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield cache_pb2_grpc.CacheServiceStub(channel)
    finally:
        await channel.close()
        await app.stop(1.0)


async def test_miss_then_put_then_hit_with_the_same_bytes(
    cache: cache_pb2_grpc.CacheServiceAsyncStub,
) -> None:
    assert not (await cache.Get(cache_pb2.CacheGetRequest(key=_key()))).hit
    value = json.dumps({"photo": {"id": "1"}, "stat": "ok"}).encode()
    put = await cache.Put(cache_pb2.CachePutRequest(key=_key(), value=value))
    assert put.stored and put.ttl_seconds == 300
    got = await cache.Get(cache_pb2.CacheGetRequest(key=_key()))
    assert got.hit and got.value == value
    assert 290 <= got.ttl_seconds <= 300


async def test_searches_live_shorter_and_writes_are_never_stored(
    cache: cache_pb2_grpc.CacheServiceAsyncStub,
) -> None:
    search = await cache.Put(
        cache_pb2.CachePutRequest(key=_key("flickr.photos.search", text="x"), value=b"{}")
    )
    assert search.ttl_seconds == 60
    write = await cache.Put(cache_pb2.CachePutRequest(key=_key("flickr.photos.delete"), value=b"{}"))
    assert not write.stored
    assert not (await cache.Get(cache_pb2.CacheGetRequest(key=_key("flickr.photos.delete")))).hit
    capped = await cache.Put(cache_pb2.CachePutRequest(key=_key(), value=b"{}", ttl_seconds=10**7))
    assert capped.ttl_seconds == 24 * 3600


async def test_param_order_does_not_matter(cache: cache_pb2_grpc.CacheServiceAsyncStub) -> None:
    first = cache_pb2.CacheKey(method="flickr.photos.search", token_id_hash=TOKEN_A)
    first.params["a"] = "1"
    first.params["b"] = "2"
    second = cache_pb2.CacheKey(method="flickr.photos.search", token_id_hash=TOKEN_A)
    second.params["b"] = "2"
    second.params["a"] = "1"
    await cache.Put(cache_pb2.CachePutRequest(key=first, value=b"v"))
    assert (await cache.Get(cache_pb2.CacheGetRequest(key=second))).value == b"v"


async def test_one_tokens_entries_are_never_served_to_another(
    cache: cache_pb2_grpc.CacheServiceAsyncStub,
) -> None:
    await cache.Put(cache_pb2.CachePutRequest(key=_key(token=TOKEN_A), value=b"private to A"))
    assert not (await cache.Get(cache_pb2.CacheGetRequest(key=_key(token=TOKEN_B)))).hit
    # Crafted parameters cannot reach into another scope either: the token is part of the digest and the key.
    crafted = _key(token=TOKEN_B, photo_id="1", token_id_hash=TOKEN_A)
    assert not (await cache.Get(cache_pb2.CacheGetRequest(key=crafted))).hit


async def test_invalidating_a_token_drops_all_its_entries_at_once(
    cache: cache_pb2_grpc.CacheServiceAsyncStub, cache_redis: Any
) -> None:
    for i in range(300):
        await cache.Put(cache_pb2.CachePutRequest(key=_key(photo_id=str(i)), value=b"a"))
    await cache.Put(cache_pb2.CachePutRequest(key=_key(token=TOKEN_B), value=b"b"))
    await cache_redis.config_resetstat()
    resp = await cache.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A))
    assert resp.generation == 1
    stats = await cache_redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    # One increment of the generation, whatever the number of entries: no SCAN, no DEL, no UNLINK.
    assert calls == {"incrby": 1}, calls  # redis-py sends INCR as INCRBY key 1
    assert not any(
        [(await cache.Get(cache_pb2.CacheGetRequest(key=_key(photo_id=str(i))))).hit for i in (0, 150, 299)]
    )
    assert (await cache.Get(cache_pb2.CacheGetRequest(key=_key(token=TOKEN_B)))).hit


async def test_invalidating_one_method_keeps_the_tokens_other_entries(
    cache: cache_pb2_grpc.CacheServiceAsyncStub,
) -> None:
    await cache.Put(cache_pb2.CachePutRequest(key=_key("flickr.photos.getInfo"), value=b"info"))
    await cache.Put(cache_pb2.CachePutRequest(key=_key("flickr.photos.getSizes"), value=b"sizes"))
    await cache.Invalidate(
        cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A, method="flickr.photos.getInfo")
    )
    assert not (await cache.Get(cache_pb2.CacheGetRequest(key=_key("flickr.photos.getInfo")))).hit
    assert (await cache.Get(cache_pb2.CacheGetRequest(key=_key("flickr.photos.getSizes")))).hit


async def test_bad_requests_get_field_violations(cache: cache_pb2_grpc.CacheServiceAsyncStub) -> None:
    bad_key = cache_pb2.CacheKey(method="photos", token_id_hash="NOT-HEX", params={"bad key": "v"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cache.Get(cache_pb2.CacheGetRequest(key=bad_key))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"key.method", "key.token_id_hash", "key.params[bad key]"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cache.Put(cache_pb2.CachePutRequest(key=_key(), value=b"x" * (1024 * 1024 + 1), ttl_seconds=-1))
    assert bad_fields(err.value) == {"value", "ttl_seconds"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cache.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash="", method="nope"))
    assert bad_fields(err.value) == {"token_id_hash", "method"}
    too_many = cache_pb2.CacheKey(
        method="flickr.photos.search", token_id_hash=TOKEN_A, params={f"p{i}": "v" for i in range(65)}
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cache.Get(cache_pb2.CacheGetRequest(key=too_many))
    assert bad_fields(err.value) == {"key.params"}


async def test_stats_count_hits_misses_and_puts(cache: cache_pb2_grpc.CacheServiceAsyncStub) -> None:
    await cache.Get(cache_pb2.CacheGetRequest(key=_key()))
    await cache.Put(cache_pb2.CachePutRequest(key=_key(), value=b"v"))
    await cache.Get(cache_pb2.CacheGetRequest(key=_key()))
    stats = await cache.Stats(cache_pb2.CacheStatsRequest())
    assert (stats.hits, stats.misses, stats.puts) == (1, 1, 1)
    assert stats.keys >= 1 and stats.used_memory_bytes > 0


async def test_health_reports_serving(cache_redis_url: str) -> None:
    app = CacheApp(
        Settings.from_env(env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=cache_redis_url)
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            resp = await health.Check(health_pb2.HealthCheckRequest(service="flickrhub.v1.CacheService"))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(1.0)


async def test_a_cache_outage_reads_as_misses_and_refuses_writes(tmp_path: Path) -> None:
    redis = redis_server("cache", tmp_path).start()
    app = CacheApp(
        Settings.from_env(
            env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=f"redis://127.0.0.1:{redis.port}/0"
        )
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Put(cache_pb2.CachePutRequest(key=_key(), value=b"v"))
            redis.stop()
            assert not (await stub.Get(cache_pb2.CacheGetRequest(key=_key()))).hit
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Put(cache_pb2.CachePutRequest(key=_key(), value=b"v"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Stats(cache_pb2.CacheStatsRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(1.0)
        redis.stop()


def test_entry_keys_live_in_the_tokens_slot() -> None:
    entry = keys.cache_entry(
        TOKEN_A, 3, 1, keys.cache_digest("flickr.photos.getInfo", {"photo_id": "1"}, TOKEN_A)
    )
    assert entry.startswith(keys.cache_entry_prefix(TOKEN_A))
    assert "{" + TOKEN_A + "}" in entry and "{" + TOKEN_A + "}" in keys.cache_generation(
        TOKEN_A, "flickr.x.y"
    )
    assert keys.cache_digest("m", {"a": "1", "b": "2"}, TOKEN_A) == keys.cache_digest(
        "m", {"b": "2", "a": "1"}, TOKEN_A
    )
    assert keys.cache_digest("m", {"a": "1"}, TOKEN_A) != keys.cache_digest("m", {"a": "1"}, TOKEN_B)
