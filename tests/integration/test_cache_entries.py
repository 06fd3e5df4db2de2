"""The cache's entry layout on a real Redis: one MGET per lookup, generations in the entry's value.

An entry is `fhc:e:{T}:<digest>` holding `b"<gen>:<mgen>:<expires_at>\\n" + answer` (cache/store.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from cache.app import CacheApp
from cache.store import MAX_TTL_S
from common import keys, redisio
from common.settings import Settings
from flickrhub.v1 import cache_pb2
from tests.helpers.cache import redis_commands, running_cache

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from flickrhub.v1.cache_pb2_grpc import CacheServiceAsyncStub as Stub

TOKEN = "d" * 32
METHOD = "flickr.photos.getInfo"
OTHER_METHOD = "flickr.photos.getSizes"
READ_TTL = 300


def _settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cache_port": 0,
        "cache_metrics_port": -1,
        "cache_redis_url": redis_url,
        "cache_ttl_read_s": READ_TTL,
    }
    return Settings.from_env(env={}, **{**values, **overrides})


def _key(photo: str = "1", method: str = METHOD) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(method=method, params={"photo_id": photo}, token_id_hash=TOKEN)


def _entry(photo: str = "1", method: str = METHOD) -> str:
    return keys.cache_entry(TOKEN, keys.cache_digest(method, {"photo_id": photo}, TOKEN))


async def _get(stub: Stub, photo: str = "1", method: str = METHOD) -> cache_pb2.CacheGetResponse:
    return await stub.Get(cache_pb2.CacheGetRequest(key=_key(photo, method)))


async def _put(stub: Stub, photo: str = "1", value: bytes = b"v", ttl: int = 0, method: str = METHOD) -> None:
    put = await stub.Put(cache_pb2.CachePutRequest(key=_key(photo, method), value=value, ttl_seconds=ttl))
    assert put.stored


async def _batch_get(stub: Stub, photo: str = "1", method: str = METHOD) -> cache_pb2.CacheGetResponse:
    op = cache_pb2.CacheOp(id=1, get=cache_pb2.CacheGetRequest(key=_key(photo, method)))
    answer = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[op]))
    assert answer.results[0].WhichOneof("result") == "get"
    return answer.results[0].get


async def _batch_put(stub: Stub, photo: str = "1", value: bytes = b"v", method: str = METHOD) -> None:
    op = cache_pb2.CacheOp(id=1, put=cache_pb2.CachePutRequest(key=_key(photo, method), value=value))
    answer = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[op]))
    assert answer.results[0].put.stored


async def _commands(redis: redisio.Redis) -> dict[str, int]:
    """Per-command calls since CONFIG RESETSTAT, the stats flush left out (the app sends its
    hit/miss counts, HINCRBY, every second on its own, whenever that falls)."""
    return await redis_commands(redis, ignore={"hincrby"})


async def _header(app: CacheApp, entry: str) -> tuple[str, str, int]:
    """(generation, method generation, expires at) of an entry's stored value."""
    redis: Any = app.redis  # decode=False: the answer is bytes
    raw = await redis.get(entry)
    assert raw is not None
    gen, mgen, expires = raw.partition(b"\n")[0].decode().split(":")
    return gen, mgen, int(expires)


async def _generations(redis: redisio.Redis, method: str = METHOD) -> tuple[str, str]:
    gen, mgen = await redis.mget(keys.cache_generation(TOKEN), keys.cache_generation(TOKEN, method))
    assert gen is not None and mgen is not None
    return str(gen), str(mgen)


@pytest_asyncio.fixture
async def served(cache_redis_url: str, cache_redis: redisio.Redis) -> AsyncIterator[tuple[CacheApp, Stub]]:
    async with running_cache(_settings(cache_redis_url)) as started:
        yield started


@pytest_asyncio.fixture
async def app(served: tuple[CacheApp, Stub]) -> CacheApp:
    return served[0]


@pytest_asyncio.fixture
async def stub(served: tuple[CacheApp, Stub]) -> Stub:
    return served[1]


async def test_a_get_is_one_mget_and_no_script_single_or_batched_hit_or_miss(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis
) -> None:
    await _put(stub, "hit", b"answer")
    await app.store.flush_stats()
    for lookup in (_get, _batch_get):
        for photo, hit in (("hit", True), ("miss", False)):
            await cache_redis.config_resetstat()
            got = await lookup(stub, photo)
            assert got.hit is hit and got.value == (b"answer" if hit else b"")
            assert await _commands(cache_redis) == {"mget": 1}, (lookup.__name__, photo)
    # Five lookups of a batch: five MGETs, still no script.
    ops = [cache_pb2.CacheOp(id=i, get=cache_pb2.CacheGetRequest(key=_key(str(i)))) for i in range(5)]
    await cache_redis.config_resetstat()
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=ops))
    assert await _commands(cache_redis) == {"mget": 5}


async def test_with_warming_a_get_is_one_mget_plus_its_popularity_count(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    async with running_cache(_settings(cache_redis_url, cache_warm_enabled=True)) as (_, stub):
        await _put(stub)
        for lookup in (_get, _batch_get):
            await cache_redis.config_resetstat()
            assert (await lookup(stub)).hit
            assert await _commands(cache_redis) == {"mget": 1, "zincrby": 1}


@pytest.mark.parametrize("scope", ["token", "method"])
async def test_an_entry_stored_before_an_invalidation_is_never_served_after_it(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis, scope: str
) -> None:
    method = "" if scope == "token" else METHOD
    await _put(stub, "1", b"old")
    await _put(stub, "1", b"other method", method=OTHER_METHOD)
    before = await _header(app, _entry("1"))
    assert (await _get(stub, "1")).value == b"old"
    await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN, method=method))
    # The entry is still there (nothing is deleted), but its header names the old generations.
    assert await _header(app, _entry("1")) == before
    assert before[:2] != await _generations(cache_redis)
    assert not (await _get(stub, "1")).hit
    assert not (await _batch_get(stub, "1")).hit
    # A token invalidation reaches every method; a method's only that method.
    assert (await _get(stub, "1", OTHER_METHOD)).hit is (scope == "method")
    # The next Put of that key replaces it under the current generations.
    await _put(stub, "1", b"new")
    assert (await _get(stub, "1")).value == b"new"
    assert (await _header(app, _entry("1")))[:2] == await _generations(cache_redis)


@pytest.mark.parametrize("scope", ["token", "method"])
async def test_a_put_racing_an_invalidation_after_its_miss_stores_an_answer_no_get_serves(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis, scope: str
) -> None:
    method = "" if scope == "token" else METHOD
    await _batch_put(stub, "seed")  # the scope's generations exist and were renewed just now
    assert not (await _batch_get(stub, "1")).hit  # the miss keeps the generations it read
    seen = await _generations(cache_redis)
    # A write lands between the miss and the Put of the answer fetched before it.
    await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN, method=method))
    await cache_redis.config_resetstat()
    await _batch_put(stub, "1", b"fetched before the write")
    assert await _commands(cache_redis) == {"set": 1}  # the plain SET with what the miss read
    assert (await _header(app, _entry("1")))[:2] == seen != await _generations(cache_redis)
    assert not (await _get(stub, "1")).hit
    assert not (await _batch_get(stub, "1")).hit
    # That miss read the new generations: an answer fetched after the write is served.
    await _batch_put(stub, "1", b"fetched after the write")
    assert (await _batch_get(stub, "1")).value == b"fetched after the write"


async def test_a_put_that_renews_the_generations_still_stores_the_ones_its_miss_read(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis
) -> None:
    await _batch_put(stub, "seed")
    assert not (await _batch_get(stub, "1")).hit
    seen = await _generations(cache_redis)
    await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN, method=METHOD))
    app.store._renewed.clear()  # as if GENERATION_RENEW_S had passed: this Put goes through the script
    await cache_redis.config_resetstat()
    await _batch_put(stub, "1", b"fetched before the write")
    calls = await _commands(cache_redis)
    assert calls == {"evalsha": 1, "mget": 1, "expire": 2, "set": 1}, calls
    assert (await _header(app, _entry("1")))[:2] == seen
    assert not (await _batch_get(stub, "1")).hit


@pytest.mark.parametrize("lost", ["token", "method", "both"])
async def test_a_lost_generation_makes_gets_miss_and_the_next_put_seeds_a_fresh_one(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis, lost: str
) -> None:
    await _put(stub, "1", b"stored before the eviction")
    await _put(stub, "2", b"also before")
    old = await _generations(cache_redis)
    gone = {
        "token": [keys.cache_generation(TOKEN)],
        "method": [keys.cache_generation(TOKEN, METHOD)],
        "both": [keys.cache_generation(TOKEN), keys.cache_generation(TOKEN, METHOD)],
    }[lost]
    await cache_redis.delete(*gone)  # as allkeys-lru may evict it while the entries live on
    assert await cache_redis.exists(_entry("1"), _entry("2")) == 2
    for lookup in (_get, _batch_get):
        assert not (await lookup(stub, "1")).hit
        assert not (await lookup(stub, "2")).hit
    # A Put (batched: its miss saw a generation missing, so it goes through the script) seeds it
    # from the Redis clock: a value the entries stored before never carry.
    await _batch_put(stub, "1", b"fresh")
    new = await _generations(cache_redis)
    for i, name in enumerate((keys.cache_generation(TOKEN), keys.cache_generation(TOKEN, METHOD))):
        if name in gone:
            assert int(new[i]) > int(old[i])
        else:
            assert new[i] == old[i]
    assert (await _get(stub, "1")).value == b"fresh"
    assert not (await _get(stub, "2")).hit  # still there, under the generations that were lost
    assert (await _header(app, _entry("2")))[:2] == old


async def test_a_hits_seconds_left_come_from_its_header_within_the_stored_ttl(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis
) -> None:
    before = int(time.time())
    await _put(stub, "1", ttl=10)
    await _batch_put(stub, "2")  # the class TTL (300 s)
    after = int(time.time())
    _, _, expires = await _header(app, _entry("1"))
    assert before + 10 <= expires <= after + 10
    assert 9_000 <= await cache_redis.pttl(_entry("1")) <= 10_000
    for lookup in (_get, _batch_get):
        assert 9 <= (await lookup(stub, "1")).ttl_seconds <= 10
        assert READ_TTL - 2 <= (await lookup(stub, "2")).ttl_seconds <= READ_TTL
    first = (await _get(stub, "1")).ttl_seconds
    await asyncio.sleep(1.1)
    assert 1 <= (await _get(stub, "1")).ttl_seconds <= first - 1
    # An entry whose header says it is due but whose key still lives (clocks apart by a second)
    # has at least 1 s left; a header past the longest TTL is held to it.
    gen, mgen = await _generations(cache_redis)
    redis: Any = app.redis
    for expires_at, left in ((int(time.time()) - 5, 1), (int(time.time()) + 10 * MAX_TTL_S, MAX_TTL_S)):
        await redis.set(_entry("3"), f"{gen}:{mgen}:{expires_at}\n".encode() + b"x", ex=30)
        assert (await _get(stub, "3")).ttl_seconds == left
        assert (await _batch_get(stub, "3")).ttl_seconds == left


async def test_any_answer_bytes_come_back_exactly_and_a_value_without_a_header_is_a_miss(
    app: CacheApp, stub: Stub, cache_redis: redisio.Redis
) -> None:
    answers = [
        b"",
        b"\n",
        b"1:2:3\n{}",
        b'{"stat":"ok"}\n\n:\n',
        bytes(range(256)) * 4,
        "Zürich 東京 🐈\r\n".encode(),
    ]
    for i, value in enumerate(answers):
        await _put(stub, f"single{i}", value)
        await _batch_put(stub, f"batch{i}", value)
    for i, value in enumerate(answers):
        for photo in (f"single{i}", f"batch{i}"):
            for lookup in (_get, _batch_get):
                got = await lookup(stub, photo)
                assert got.hit and got.value == value, (photo, lookup.__name__)
    gen, mgen = await _generations(cache_redis)
    redis: Any = app.redis
    for raw in (b"{}", b"no header\n{}", f"{gen}:{mgen}\n{{}}".encode(), f"{gen}:{mgen}:soon\n{{}}".encode()):
        await redis.set(_entry("x"), raw, ex=30)
        assert not (await _get(stub, "x")).hit, raw
        assert not (await _batch_get(stub, "x")).hit, raw


async def test_puts_invalidations_and_claims_reload_their_scripts_after_a_script_flush(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    async with running_cache(_settings(cache_redis_url, cache_warm_enabled=True)) as (_, stub):
        await _put(stub, "1", b"one", ttl=20)
        for _ in range(3):
            assert (await _get(stub, "1")).hit
        for step in ("put", "batch put", "invalidate", "warm"):
            await cache_redis.script_flush()
            if step == "put":
                await _put(stub, "2", b"two")
                assert (await _get(stub, "2")).value == b"two"
            elif step == "batch put":
                await _batch_put(stub, "3", b"three")
                assert (await _batch_get(stub, "3")).value == b"three"
            elif step == "invalidate":
                await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN, method=METHOD))
                assert not (await _get(stub, "1")).hit
                await _put(stub, "1", b"one again", ttl=20)
            else:
                request = cache_pb2.CacheWarmCandidatesRequest(
                    top=10, min_requests=3, refresh_within_seconds=30, limit=10, claim_seconds=30
                )
                offered = (await stub.WarmCandidates(request)).candidates
                assert [c.key.params["photo_id"] for c in offered] == ["1"]
