"""The cache service over a real gRPC channel on a real allkeys-lru Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from cache.app import CacheApp
from cache.store import GENERATION_TTL_S
from common import keys, redisio
from common.settings import Settings
from devstack.procs import Managed, free_port, python_module, wait_for_port
from devstack.stores import redis_server
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from tests.helpers.cache import redis_commands, running_cache

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32
READ_TTL = 300
SEARCH_TTL = 60

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from flickrhub.v1.cache_pb2_grpc import CacheServiceAsyncStub as Stub


def _settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cache_port": 0,
        "cache_metrics_port": -1,
        "cache_redis_url": redis_url,
        "cache_ttl_read_s": READ_TTL,
        "cache_ttl_search_s": SEARCH_TTL,
    }
    return Settings.from_env(env={}, **{**values, **overrides})


def _key(method: str = "flickr.photos.getInfo", token: str = TOKEN_A, **params: str) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(method=method, params=params or {"photo_id": "1"}, token_id_hash=token)


async def _get(stub: Stub, key: cache_pb2.CacheKey) -> cache_pb2.CacheGetResponse:
    return await stub.Get(cache_pb2.CacheGetRequest(key=key))


async def _put(
    stub: Stub, key: cache_pb2.CacheKey, value: bytes = b"{}", ttl: int = 0
) -> cache_pb2.CachePutResponse:
    return await stub.Put(cache_pb2.CachePutRequest(key=key, value=value, ttl_seconds=ttl))


_commands = redis_commands


@pytest_asyncio.fixture
async def served(cache_redis_url: str, cache_redis: redisio.Redis) -> AsyncIterator[tuple[CacheApp, Stub]]:
    async with running_cache(_settings(cache_redis_url)) as started:
        yield started


@pytest_asyncio.fixture
async def app(served: tuple[CacheApp, Stub]) -> CacheApp:
    return served[0]


@pytest_asyncio.fixture
async def cache(served: tuple[CacheApp, Stub]) -> Stub:
    return served[1]


async def test_miss_then_put_then_hit_returns_the_same_bytes(cache: Stub) -> None:
    assert not (await _get(cache, _key())).hit
    value = json.dumps({"photo": {"id": "1", "title": "Zürich"}, "stat": "ok"}, ensure_ascii=False).encode()
    put = await _put(cache, _key(), value)
    assert put.stored and put.ttl_seconds == READ_TTL
    got = await _get(cache, _key())
    assert got.hit and got.value == value
    assert READ_TTL - 5 <= got.ttl_seconds <= READ_TTL


async def test_searches_live_shorter_than_other_reads(cache: Stub) -> None:
    search = _key("flickr.photos.search", text="cats")
    assert (await _put(cache, search)).ttl_seconds == SEARCH_TTL
    assert (await _put(cache, _key("flickr.photos.getRecent"))).ttl_seconds == SEARCH_TTL
    assert (await _put(cache, _key("flickr.photosets.getList"))).ttl_seconds == READ_TTL
    assert SEARCH_TTL - 5 <= (await _get(cache, search)).ttl_seconds <= SEARCH_TTL


async def test_a_requested_ttl_overrides_the_class_but_is_capped_at_a_day(
    cache: Stub, cache_redis: redisio.Redis
) -> None:
    assert (await _put(cache, _key(photo_id="1"), ttl=10)).ttl_seconds == 10
    assert 5 <= (await _get(cache, _key(photo_id="1"))).ttl_seconds <= 10
    assert (await _put(cache, _key(photo_id="2"), ttl=2**31 - 1)).ttl_seconds == 24 * 3600
    assert 24 * 3600 - 5 <= (await _get(cache, _key(photo_id="2"))).ttl_seconds <= 24 * 3600
    # The generations outlive every entry stored under them.
    assert await cache_redis.ttl(keys.cache_generation(TOKEN_A)) > 24 * 3600


async def test_writes_and_unknown_methods_are_never_stored(cache: Stub, cache_redis: redisio.Redis) -> None:
    for method in ("flickr.photos.delete", "flickr.photos.setMeta", "flickr.something.new"):
        put = await _put(cache, _key(method), ttl=600)
        assert (put.stored, put.ttl_seconds) == (False, 0)
        assert not (await _get(cache, _key(method))).hit
    assert await cache_redis.keys("fhc:e:*") == []


async def test_param_order_does_not_matter(cache: Stub) -> None:
    first = cache_pb2.CacheKey(method="flickr.photos.search", token_id_hash=TOKEN_A)
    first.params["text"] = "東京"
    first.params["per_page"] = "50"
    second = cache_pb2.CacheKey(method="flickr.photos.search", token_id_hash=TOKEN_A)
    second.params["per_page"] = "50"
    second.params["text"] = "東京"
    await _put(cache, first, b"v")
    assert (await _get(cache, second)).value == b"v"
    second.params["text"] = "東京 "
    assert not (await _get(cache, second)).hit


async def test_one_tokens_entries_are_never_served_to_another(cache: Stub, cache_redis: Any) -> None:
    await _put(cache, _key(token=TOKEN_A, photo_id="1"), b"private to A")
    assert not (await _get(cache, _key(token=TOKEN_B, photo_id="1"))).hit
    # Crafted parameters cannot reach into A's scope: the token is in the key's hash tag and in the digest.
    for crafted in (
        {"photo_id": "1", "token_id_hash": TOKEN_A},
        {"photo_id": "1", "oauth_token": TOKEN_A},
        {"photo_id": f'1"],"{TOKEN_A}'},
        {"photo_id": "1}", "x": "{" + TOKEN_A + "}"},
    ):
        assert not (await _get(cache, _key(token=TOKEN_B, **crafted))).hit
    # Nor can a token id that smuggles a hash tag or a newline: it is refused before Redis sees it.
    for forged in (TOKEN_B + "}{" + TOKEN_A, TOKEN_A + "\n", TOKEN_A.upper()):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _get(cache, _key(token=forged))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    entries = await cache_redis.keys("fhc:e:*")
    assert len(entries) == 1 and entries[0].startswith(keys.cache_entry_prefix(TOKEN_A))


async def test_invalidating_a_token_costs_the_same_few_commands_for_one_entry_or_five_thousand(
    app: CacheApp, cache: Stub, cache_redis: redisio.Redis
) -> None:
    small, big = "c" * 32, TOKEN_A
    await _put(cache, _key(token=small), b"c")
    # 5,000 entries straight through the service's store (same keys as Put, without 5,000 gRPC calls).
    for start in range(0, 5000, 1000):
        await asyncio.gather(
            *(
                app.store.put("flickr.photos.getInfo", {"photo_id": str(i)}, big, b"a", READ_TTL)
                for i in range(start, start + 1000)
            )
        )
    assert (await _get(cache, _key(token=big, photo_id="4999"))).value == b"a"
    await _put(cache, _key(token=TOKEN_B, photo_id="1"), b"b")
    keys_before = await cache_redis.dbsize()

    calls = {}
    for token in (small, big):
        await cache_redis.config_resetstat()
        await cache.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=token))
        calls[token] = await _commands(cache_redis)
    # EVALSHA running TIME, GET and SET on the generation key: no SCAN, no DEL, no UNLINK, whatever the count.
    assert calls[big] == calls[small] == {"evalsha": 1, "time": 1, "get": 1, "set": 1}, calls
    assert await cache_redis.dbsize() == keys_before  # nothing deleted: stale entries age out by TTL or LRU
    hits = await asyncio.gather(*(_get(cache, _key(token=big, photo_id=str(i))) for i in range(0, 5000, 97)))
    assert not any(h.hit for h in hits)
    assert not (await _get(cache, _key(token=small))).hit
    assert (await _get(cache, _key(token=TOKEN_B, photo_id="1"))).value == b"b"
    # The token's scope works again at once.
    await _put(cache, _key(token=big, photo_id="1"), b"fresh")
    assert (await _get(cache, _key(token=big, photo_id="1"))).value == b"fresh"


async def test_invalidating_one_method_keeps_the_tokens_other_entries(cache: Stub) -> None:
    await _put(cache, _key("flickr.photos.getInfo"), b"info")
    await _put(cache, _key("flickr.photos.getSizes"), b"sizes")
    await _put(cache, _key("flickr.photos.getInfo", token=TOKEN_B), b"B's info")
    first = await cache.Invalidate(
        cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A, method="flickr.photos.getInfo")
    )
    second = await cache.Invalidate(
        cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A, method="flickr.photos.getInfo")
    )
    assert second.generation > first.generation > 0
    assert not (await _get(cache, _key("flickr.photos.getInfo"))).hit
    assert (await _get(cache, _key("flickr.photos.getSizes"))).value == b"sizes"
    assert (await _get(cache, _key("flickr.photos.getInfo", token=TOKEN_B))).value == b"B's info"


async def test_an_evicted_generation_never_brings_invalidated_entries_back(
    cache: Stub, cache_redis: redisio.Redis
) -> None:
    await _put(cache, _key(photo_id="1"), b"old")
    await _put(cache, _key("flickr.photos.getSizes"), b"old sizes")
    await cache.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A))
    await cache.Invalidate(
        cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A, method="flickr.photos.getSizes")
    )
    # allkeys-lru may evict any key; the stale entries are still there.
    await cache_redis.delete(
        keys.cache_generation(TOKEN_A), keys.cache_generation(TOKEN_A, "flickr.photos.getSizes")
    )
    assert not (await _get(cache, _key(photo_id="1"))).hit
    assert not (await _get(cache, _key("flickr.photos.getSizes"))).hit
    await _put(cache, _key(photo_id="2"), b"new")  # seeds a fresh generation from the clock
    assert not (await _get(cache, _key(photo_id="1"))).hit
    assert (await _get(cache, _key(photo_id="2"))).value == b"new"
    assert 0 < await cache_redis.ttl(keys.cache_generation(TOKEN_A)) <= GENERATION_TTL_S


async def test_a_put_renews_its_generations_once_per_renewal_period_and_then_costs_two_commands(
    cache: Stub, cache_redis: redisio.Redis
) -> None:
    await _put(cache, _key(photo_id="1"), b"one")  # seeds both generations
    generation = keys.cache_generation(TOKEN_A)
    await cache_redis.expire(generation, 1000)  # as if long ago: this replica renewed it just now
    await cache_redis.config_resetstat()
    await _put(cache, _key(photo_id="2"), b"two")
    used = await _commands(cache_redis)
    assert used.get("mget") == 1 and used.get("set") == 1 and "expire" not in used, used
    assert await cache_redis.ttl(generation) <= 1000  # not renewed within GENERATION_RENEW_S
    assert (await _get(cache, _key(photo_id="2"))).value == b"two"


async def test_a_put_renews_a_generation_another_replica_kept_alive(
    app: CacheApp, cache_redis: redisio.Redis
) -> None:
    await app.store.put("flickr.photos.getInfo", {"photo_id": "1"}, TOKEN_A, b"one", 60)
    generation = keys.cache_generation(TOKEN_A)
    await cache_redis.expire(generation, 1000)
    app.store._renewed.clear()  # what a replica that never renewed it knows
    await app.store.put("flickr.photos.getInfo", {"photo_id": "2"}, TOKEN_A, b"two", 60)
    assert await cache_redis.ttl(generation) > GENERATION_TTL_S - 5


def _violations(status: Any) -> set[str]:
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


async def _bad_fields(call: Any) -> set[str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    return _violations(status)


async def test_bad_requests_get_invalid_argument_with_field_violations_and_change_nothing(
    cache: Stub, cache_redis: redisio.Redis
) -> None:
    bad_key = cache_pb2.CacheKey(
        method="photos.getInfo", token_id_hash="NOT-HEX", params={"": "v", "k" * 65: "v", "ok": "v" * 4097}
    )
    assert await _bad_fields(cache.Get(cache_pb2.CacheGetRequest(key=bad_key))) == {
        "key.method",
        "key.token_id_hash",
        "key.params[]",
        "key.params[" + "k" * 64 + "]",
        "key.params[ok]",
    }
    assert await _bad_fields(cache.Get(cache_pb2.CacheGetRequest())) == {"key.method", "key.token_id_hash"}
    for method in (
        "flickr.photos",
        "flickr.photos.get-info",
        "flickr.photos.getInfo\n",
        "flickr." + "a." * 70 + "b",
    ):
        assert await _bad_fields(cache.Get(cache_pb2.CacheGetRequest(key=_key(method)))) == {"key.method"}
    for token in ("a" * 15, "a" * 65, "g" * 32):
        assert await _bad_fields(cache.Get(cache_pb2.CacheGetRequest(key=_key(token=token)))) == {
            "key.token_id_hash"
        }
    too_many = _key("flickr.photos.search", **{f"p{i}": "v" for i in range(65)})
    assert await _bad_fields(cache.Get(cache_pb2.CacheGetRequest(key=too_many))) == {"key.params"}
    at_limits = _key("flickr.photos.search", **{f"p{i:02d}" + "k" * 61: "v" * 4096 for i in range(64)})
    assert not (await _get(cache, at_limits)).hit

    huge = cache_pb2.CachePutRequest(key=_key(), value=b"x" * (1024 * 1024 + 1), ttl_seconds=-1)
    assert await _bad_fields(cache.Put(huge)) == {"value", "ttl_seconds"}
    assert (await _put(cache, _key(photo_id="max"), b"x" * (1024 * 1024))).stored
    assert await _bad_fields(
        cache.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash="", method="nope"))
    ) == {"token_id_hash", "method"}
    assert not (await _get(cache, _key())).hit
    assert len(await cache_redis.keys("fhc:e:*")) == 1  # only the 1 MiB answer that was within the limit


async def test_stats_add_up_across_replicas(
    app: CacheApp, cache: Stub, cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    await _get(cache, _key())  # miss
    await _put(cache, _key(), b"v")
    await _get(cache, _key())  # hit
    await _get(cache, _key("flickr.photos.delete"))  # a write is never stored: a miss
    other = CacheApp(_settings(cache_redis_url))
    await other.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            replica = cache_pb2_grpc.CacheServiceStub(channel)
            assert (await _get(replica, _key())).hit
            # The replica's hit reaches the shared hash within its flush period, without any further call.
            deadline = time.monotonic() + 5
            while (stats := await cache.Stats(cache_pb2.CacheStatsRequest())).hits < 2:
                assert time.monotonic() < deadline, stats
                await asyncio.sleep(0.1)
            assert (stats.hits, stats.misses, stats.puts) == (2, 2, 1)
            seen_by_replica = await replica.Stats(cache_pb2.CacheStatsRequest())
            assert (seen_by_replica.hits, seen_by_replica.misses, seen_by_replica.puts) == (2, 2, 1)
            assert stats.keys == await cache_redis.dbsize()
            assert stats.used_memory_bytes > 0 and stats.evicted_keys == 0
    finally:
        await other.stop(1.0)


async def test_stats_report_evictions_once_the_memory_cap_is_reached(cache: Stub) -> None:
    # The test Redis is capped at 16 MiB: 24 answers of 1 MiB must push some out (allkeys-lru).
    # (LRU may evict the stats hash itself, so its counters are not asserted here.)
    for i in range(24):
        await _put(cache, _key(photo_id=str(i)), bytes([i]) * (1024 * 1024))
    stats = await cache.Stats(cache_pb2.CacheStatsRequest())
    assert stats.evicted_keys > 0 and stats.keys < 24
    assert stats.used_memory_bytes <= 17 * 1024 * 1024


async def test_health_reports_serving_and_metrics_are_exported(
    cache_redis_url: str, cache_redis: Any
) -> None:
    app = CacheApp(_settings(cache_redis_url, cache_metrics_port=0))
    await app.start()
    try:
        assert app.metrics_port > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "flickrhub.v1.CacheService"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            await _get(cache_pb2_grpc.CacheServiceStub(channel), _key())
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as r,
        ):
            text = await r.text()
        assert 'flickrhub_cache_requests_total{method_class="read",op="get",outcome="miss"}' in text
        assert 'flickrhub_cache_op_seconds_bucket{le="0.001",op="get"}' in text
    finally:
        await app.stop(1.0)


async def test_graceful_stop_turns_not_serving_and_finishes_the_call_in_flight(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    app = CacheApp(_settings(cache_redis_url))
    await app.start()
    service = health_pb2.HealthCheckRequest(service="flickrhub.v1.CacheService")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        await _put(stub, _key(), b"v")
        await cache_redis.client_pause(600)  # holds the next Get inside Redis for 0.6 s
        in_flight = asyncio.create_task(_get(stub, _key()))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        stopping = asyncio.create_task(app.stop(10.0))
        await asyncio.sleep(0.1)
        assert not in_flight.done() and not stopping.done()
        # Asked in-process: the draining server takes no new calls, health probes included.
        status = (await app.grpc.health.Check(service, None)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        got = await in_flight
        await stopping
        assert got.hit and got.value == b"v"
        assert time.monotonic() - started < 5  # drained when the last call finished, not at the grace limit
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _get(stub, _key())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # The last hit count was sent before the Redis client closed.
    assert await cache_redis.hgetall(keys.CACHE_STATS) == {
        "hits": "1",
        "hits:flickr.photos.getInfo": "1",
        "puts": "1",
    }


async def test_a_cache_outage_reads_as_misses_and_refuses_writes(tmp_path: Path) -> None:
    redis = redis_server("cache", tmp_path).start()
    app = CacheApp(_settings(f"redis://127.0.0.1:{redis.port}/0"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            assert (await _put(stub, _key(), b"v")).stored
            redis.stop()
            assert not (await _get(stub, _key())).hit
            for call in (
                stub.Put(cache_pb2.CachePutRequest(key=_key(), value=b"v")),
                stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A)),
                stub.Stats(cache_pb2.CacheStatsRequest()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                status = await rpc_status.aio.from_call(call)
                assert status is not None
                assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
            # Back, empty and without our scripts: the service reloads them and counts the outage's miss.
            redis.start()
            assert (await _put(stub, _key(), b"again")).stored
            assert (await _get(stub, _key())).value == b"again"
            stats = await stub.Stats(cache_pb2.CacheStatsRequest())
            assert (stats.hits, stats.misses, stats.puts) == (1, 1, 1)
    finally:
        await app.stop(1.0)
        redis.stop()


async def test_the_service_starts_without_its_redis_and_answers_misses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = CacheApp(_settings(f"redis://127.0.0.1:{free_port()}/0"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert not (await _get(cache_pb2_grpc.CacheServiceStub(channel), _key())).hit
    finally:
        await app.stop(1.0)  # the last counts cannot be sent: logged, not raised
    assert "cache redis unavailable at start" in caplog.text
    assert "cache stats not flushed" in caplog.text


async def test_python_m_cache_serves_until_sigterm_and_exits_cleanly(
    cache_redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"CACHE_PORT": str(port), "CACHE_METRICS_PORT": "-1", "CACHE_REDIS_URL": cache_redis_url}
    proc = Managed("cache", python_module("cache"), port, tmp_path / "cache.log", env=env).start(wait=False)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20.0, proc.proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            assert (await _put(stub, _key(), b"v")).stored
            assert (await _get(stub, _key())).value == b"v"
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.stop, 10.0) == 0, proc.tail()
    finally:
        proc.kill()


async def test_per_method_ttl_overrides_win_over_the_class_and_zero_means_never(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    overrides = "flickr.photos.getInfo=600,flickr.photos.search=30,flickr.photos.getExif=0"
    app = CacheApp(_settings(cache_redis_url, cache_ttl_overrides=overrides))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            assert (await _put(stub, _key("flickr.photos.getInfo"))).ttl_seconds == 600
            assert 595 <= (await _get(stub, _key("flickr.photos.getInfo"))).ttl_seconds <= 600
            assert (await _put(stub, _key("flickr.photos.search"))).ttl_seconds == 30
            assert (await _put(stub, _key("flickr.photos.getSizes"))).ttl_seconds == READ_TTL  # no override
            assert (await _put(stub, _key("flickr.photos.getRecent"))).ttl_seconds == SEARCH_TTL
            never = await _put(stub, _key("flickr.photos.getExif"))
            assert (never.stored, never.ttl_seconds) == (False, 0)
            assert not (await _get(stub, _key("flickr.photos.getExif"))).hit
    finally:
        await app.stop(1.0)
    assert len(await cache_redis.keys("fhc:e:*")) == 4


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_hits_misses_and_hit_ratio_are_counted_per_method_and_evictions_exported(
    app: CacheApp, cache: Stub
) -> None:
    info, sizes = "flickr.photos.getInfo", "flickr.photos.getSizes"
    before = {
        (m, o): _sample("flickrhub_cache_lookups_total", method=m, outcome=o)
        for m in (info, sizes, "other")
        for o in ("hit", "miss")
    }
    await _get(cache, _key(info))  # miss
    await _put(cache, _key(info), b"v")
    for _ in range(3):
        await _get(cache, _key(info))  # hits
    await _get(cache, _key(sizes))  # miss
    await _get(cache, _key("flickr.made.up"))  # unknown (so never cached): a miss labelled `other`
    stats = await cache.Stats(cache_pb2.CacheStatsRequest())
    assert [(m.method, m.hits, m.misses) for m in stats.methods] == [
        (info, 3, 1),  # most looked-up first, then by name
        (sizes, 0, 1),
        ("other", 0, 1),
    ]
    after = {k: _sample("flickrhub_cache_lookups_total", method=k[0], outcome=k[1]) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        (info, "hit"): 3,
        (info, "miss"): 1,
        (sizes, "hit"): 0,
        (sizes, "miss"): 1,
        ("other", "hit"): 0,
        ("other", "miss"): 1,
    }
    for i in range(24):  # past the 16 MiB cap
        await _put(cache, _key(photo_id=f"big{i}"), bytes([i]) * (1024 * 1024))
    await app.export_gauges()
    assert _sample("flickrhub_cache_evicted_keys") > 0
    assert _sample("flickrhub_cache_used_memory_bytes") > 0
    # The stats hash may itself have been evicted by LRU; the ratio follows whatever it holds.
    stats = await cache.Stats(cache_pb2.CacheStatsRequest())
    for m in stats.methods:
        if m.hits + m.misses:
            assert _sample("flickrhub_cache_hit_ratio", method=m.method) == m.hits / (m.hits + m.misses)


async def _warm(
    stub: Stub, top: int = 10, min_requests: int = 3, within: int = 30, limit: int = 10, claim: int = 30
) -> list[tuple[str, int, float]]:
    request = cache_pb2.CacheWarmCandidatesRequest(
        top=top, min_requests=min_requests, refresh_within_seconds=within, limit=limit, claim_seconds=claim
    )
    answer = await stub.WarmCandidates(request)
    return [(c.key.params["photo_id"], c.ttl_seconds, c.requests) for c in answer.candidates]


async def test_warming_offers_popular_entries_near_expiry_once_and_never_unpopular_or_invalidated_ones(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    app = CacheApp(_settings(cache_redis_url, cache_warm_enabled=True))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for photo, ttl, requests in (
                ("popular", 20, 5),
                ("rare", 20, 1),
                ("fresh", 300, 5),
                ("gone", 20, 5),
            ):
                await _put(stub, _key(photo_id=photo), b"v", ttl=ttl)
                for _ in range(requests):
                    await _get(stub, _key(photo_id=photo))
            await _get(stub, _key(token=TOKEN_B, photo_id="popular"))  # another token's request counts apart
            await stub.Invalidate(
                cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN_A, method="flickr.photos.getInfo")
            )
            await _put(stub, _key(photo_id="popular"), b"v", ttl=20)
            await _put(stub, _key(photo_id="fresh"), b"v", ttl=300)
            await _put(stub, _key(photo_id="rare"), b"v", ttl=20)
            # "gone" was invalidated and not stored again: warming leaves it to the next real request.
            [(offered, left, count)] = await _warm(stub)
            assert (offered, count) == ("popular", 5.0) and 15 <= left <= 20
            assert await _warm(stub) == []  # claimed: a second worker does not get it too
            assert (await _bad_fields(stub.WarmCandidates(cache_pb2.CacheWarmCandidatesRequest()))) == {
                "top",
                "min_requests",
                "refresh_within_seconds",
                "limit",
                "claim_seconds",
            }
        # The popularity set is bounded (CACHE_WARM_TOP x 50) and its counts halve once a minute.
        # The first pass ever only starts the clock; a minute later (the marker gone) counts halve.
        await cache_redis.delete(keys.CACHE_HOT_DECAY, keys.CACHE_HOT_SINCE)
        await app.store.maintain_hot()
        popular = keys.cache_canonical("flickr.photos.getInfo", {"photo_id": "popular"}, TOKEN_A)
        assert await cache_redis.zscore(keys.CACHE_HOT, popular) == 5.0
        await cache_redis.delete(keys.CACHE_HOT_DECAY)
        await cache_redis.zadd(keys.CACHE_HOT, {f"x{i}": 1 for i in range(2000)})
        await app.store.maintain_hot()
        assert await cache_redis.zcard(keys.CACHE_HOT) == 20 * 50
        assert (
            await cache_redis.zscore(
                keys.CACHE_HOT,
                keys.cache_canonical("flickr.photos.getInfo", {"photo_id": "popular"}, TOKEN_A),
            )
            == 2.5
        )
        await app.store.maintain_hot()  # within the minute: no second halving
        assert (
            await cache_redis.zscore(
                keys.CACHE_HOT,
                keys.cache_canonical("flickr.photos.getInfo", {"photo_id": "popular"}, TOKEN_A),
            )
            == 2.5
        )
    finally:
        await app.stop(1.0)


async def test_without_warming_lookups_are_not_counted_and_no_candidates_are_offered(
    cache: Stub, cache_redis: redisio.Redis
) -> None:
    await _put(cache, _key(), b"v", ttl=10)
    for _ in range(5):
        assert (await _get(cache, _key())).hit
    assert await _warm(cache, min_requests=1) == []
    assert not await cache_redis.exists(keys.CACHE_HOT)
