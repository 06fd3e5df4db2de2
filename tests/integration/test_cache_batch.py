"""Batched cache operations (Exchange, ExchangeStream) and the worker's batching client, on real servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from cache.app import CacheApp
from common import keys, redisio, telemetry
from common.settings import Settings
from devstack.procs import free_port
from devstack.stores import redis_server
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from tests.helpers.cache import redis_commands, running_cache
from worker.cache_client import CacheClient

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from flickrhub.v1.cache_pb2_grpc import CacheServiceAsyncStub as Stub

TOKEN = "a" * 32
METHOD = "flickr.photos.getInfo"
EXPORTER = InMemorySpanExporter()


def _settings(redis_url: str) -> Settings:
    return Settings.from_env(env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=redis_url)


def _get(op_id: int, photo: str, method: str = METHOD, token: str = TOKEN) -> cache_pb2.CacheOp:
    key = cache_pb2.CacheKey(method=method, params={"photo_id": photo}, token_id_hash=token)
    return cache_pb2.CacheOp(id=op_id, get=cache_pb2.CacheGetRequest(key=key))


def _put(op_id: int, photo: str, value: bytes, method: str = METHOD, ttl: int = 0) -> cache_pb2.CacheOp:
    key = cache_pb2.CacheKey(method=method, params={"photo_id": photo}, token_id_hash=TOKEN)
    return cache_pb2.CacheOp(id=op_id, put=cache_pb2.CachePutRequest(key=key, value=value, ttl_seconds=ttl))


_commands = redis_commands


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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


@pytest_asyncio.fixture
async def client(app: CacheApp) -> AsyncIterator[CacheClient]:
    made = CacheClient(f"127.0.0.1:{app.port}", 0.5)
    yield made
    await made.close()


async def test_a_batch_answers_each_operation_as_its_single_rpc_would(stub: Stub) -> None:
    first = await stub.Exchange(
        cache_pb2.CacheBatchRequest(
            ops=[
                _get(7, "1"),
                _put(8, "1", b"one"),
                _put(9, "2", b"search", method="flickr.photos.search", ttl=30),
                _put(10, "3", b"never", method="flickr.photos.delete"),
                _get(11, "3", method="flickr.photos.delete"),
                _get(12, "x", token="NOT-HEX"),
                _put(13, "4", b"x" * (1024 * 1024 + 1)),
                cache_pb2.CacheOp(id=14),
            ]
        )
    )
    assert [r.id for r in first.results] == [7, 8, 9, 10, 11, 12, 13, 14]
    got, put, search, write, write_get, bad_token, too_big, empty = first.results
    assert got.WhichOneof("result") == "get" and not got.get.hit  # looked up before the Put of the same batch
    assert put.put.stored and put.put.ttl_seconds == 300
    assert search.put.stored and search.put.ttl_seconds == 30
    assert write.WhichOneof("result") == "put" and not write.put.stored
    assert write_get.WhichOneof("result") == "get" and not write_get.get.hit
    for refused, field in ((bad_token, "key.token_id_hash"), (too_big, "value"), (empty, "get or put")):
        assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert field in refused.error.message
    second = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(1, "1"), _get(2, "2"), _get(3, "4")]))
    hit, other, never_stored = second.results
    assert hit.get.hit and hit.get.value == b"one" and 295 <= hit.get.ttl_seconds <= 300
    assert not other.get.hit  # stored under flickr.photos.search, looked up as getInfo
    assert not never_stored.get.hit
    # The single RPCs see what the batch stored.
    single = await stub.Get(cache_pb2.CacheGetRequest(key=_get(0, "1").get.key))
    assert single.hit and single.value == b"one"


async def test_a_batch_is_one_round_trip_of_the_same_commands_and_counts_once(
    stub: Stub, cache_redis: redisio.Redis
) -> None:
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(i, str(i), b"v") for i in range(10)]))
    await stub.Stats(cache_pb2.CacheStatsRequest())  # sends the counts still held
    await cache_redis.config_resetstat()
    batch = [_get(i, str(i)) for i in range(20)] + [_put(100 + i, str(100 + i), b"w") for i in range(10)]
    answer = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=batch))
    assert sum(r.get.hit for r in answer.results[:20]) == 10
    calls = await _commands(cache_redis)
    # A Get is one MGET (both generations and the entry), no script. A Put of a scope no miss has
    # read yet is a script call: one MGET of the generations, then SET the entry (its generations
    # were renewed by this replica moments ago).
    assert calls.pop("mget") == 20 + 10
    assert calls.pop("evalsha") == 10
    assert calls.pop("set") == 10
    assert calls.pop("hincrby", 0) == 0  # counts wait for the app's flush (every second)
    assert calls.pop("time", 0) == 0  # the generations exist: nothing seeded
    assert not calls, calls
    stats = await stub.Stats(cache_pb2.CacheStatsRequest())
    assert (stats.hits, stats.misses, stats.puts) == (10, 10, 20)


async def test_a_put_after_a_miss_of_its_scope_is_one_set_under_the_generations_the_miss_read(
    stub: Stub, cache_redis: redisio.Redis
) -> None:
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(1, "seed", b"v")]))  # seeds the generations
    assert not (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(2, "a")]))).results[0].get.hit
    await cache_redis.config_resetstat()
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(3, "a", b"answer")]))
    assert await _commands(cache_redis) == {"set": 1}  # no script: the miss just read the generations
    again = (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(4, "a")]))).results[0].get
    assert again.hit and again.value == b"answer"
    # A write invalidates the scope between a miss and its Put: what the Put stores (an answer that
    # may predate the write) carries the old generations, which no lookup matches.
    assert not (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(5, "b")]))).results[0].get.hit
    await stub.Invalidate(cache_pb2.CacheInvalidateRequest(token_id_hash=TOKEN))
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(6, "b", b"before the write")]))
    assert not (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(7, "b")]))).results[0].get.hit
    # That lookup read the new generations: the next Put is found.
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(8, "b", b"after")]))
    after = (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(9, "b")]))).results[0].get
    assert after.hit and after.value == b"after"


async def test_after_a_generation_is_lost_a_put_seeds_it_again_instead_of_using_what_a_miss_read(
    stub: Stub, cache_redis: redisio.Redis
) -> None:
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(1, "seed", b"v")]))
    assert not (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(2, "a")]))).results[0].get.hit
    await cache_redis.delete(keys.cache_generation(TOKEN))  # evicted (allkeys-lru)
    assert not (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(3, "a")]))).results[0].get.hit
    await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(4, "a", b"answer")]))
    assert await cache_redis.exists(keys.cache_generation(TOKEN)) == 1  # the script seeded it
    found = (await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(5, "a")]))).results[0].get
    assert found.hit and found.value == b"answer"


async def test_more_than_256_operations_are_refused_whole(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(i, str(i)) for i in range(257)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = stub.ExchangeStream()
    await call.write(cache_pb2.CacheBatchRequest(ops=[_get(i, str(i)) for i in range(257)]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_stream_answers_each_batch_in_order(stub: Stub) -> None:
    call = stub.ExchangeStream()
    for i in range(5):
        await call.write(
            cache_pb2.CacheBatchRequest(ops=[_put(2 * i, str(i), b"%d" % i), _get(2 * i + 1, str(i))])
        )
    answers = [await call.read() for _ in range(5)]
    ids = [[r.id for r in a.results] for a in answers if isinstance(a, cache_pb2.CacheBatchResponse)]
    assert ids == [[2 * i, 2 * i + 1] for i in range(5)]
    await call.write(cache_pb2.CacheBatchRequest(ops=[_get(99, str(i)) for i in range(5)]))
    last = await call.read()
    assert isinstance(last, cache_pb2.CacheBatchResponse)
    assert [r.get.value for r in last.results] == [b"%d" % i for i in range(5)]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_the_client_batches_concurrent_jobs_and_keeps_the_cache_semantics(
    client: CacheClient, stub: Stub
) -> None:
    batches = _sample("flickrhub_cache_batch_ops_count", rpc="ExchangeStream")
    misses = await asyncio.gather(*(client.get(METHOD, {"photo_id": str(i)}, TOKEN) for i in range(100)))
    assert misses == [None] * 100
    await asyncio.gather(*(client.put(METHOD, {"photo_id": str(i)}, TOKEN, {"n": i}) for i in range(100)))
    hits = await asyncio.gather(*(client.get(METHOD, {"photo_id": str(i)}, TOKEN) for i in range(100)))
    assert hits == [{"n": i} for i in range(100)]
    # 300 operations in a handful of messages (at most 64 each), not 300 calls.
    sent = _sample("flickrhub_cache_batch_ops_count", rpc="ExchangeStream") - batches
    assert 5 <= sent <= 12, sent
    # Invalidation (a single RPC) still drops the token's entries for the batched Gets.
    await client.invalidate(TOKEN)
    assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) is None
    # Writes are never stored, whichever way they come.
    await client.put("flickr.photos.delete", {"photo_id": "1"}, TOKEN, {"stat": "ok"})
    assert await client.get("flickr.photos.delete", {"photo_id": "1"}, TOKEN) is None


async def test_a_lone_operation_waits_one_window_at_most(app: CacheApp) -> None:
    client = CacheClient(f"127.0.0.1:{app.port}", 0.5, window_s=0.05)
    try:
        await client.get(METHOD, {"photo_id": "warm-up"}, TOKEN)
        started = time.monotonic()
        assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) is None
        assert 0.04 <= time.monotonic() - started < 0.3
    finally:
        await client.close()


async def test_each_operation_is_traced_in_its_own_jobs_trace(client: CacheClient) -> None:
    telemetry.setup_tracing("tests", extra=EXPORTER)
    EXPORTER.clear()
    tracer = telemetry.tracer()

    async def job(i: int) -> tuple[int, int]:
        with tracer.start_as_current_span(telemetry.SPAN_EXECUTE):
            with tracer.start_as_current_span(telemetry.SPAN_CACHE_LOOKUP) as lookup:
                await client.get(METHOD, {"photo_id": f"t{i}"}, TOKEN)
            with tracer.start_as_current_span(telemetry.SPAN_CACHE_STORE) as store:
                await client.put(METHOD, {"photo_id": f"t{i}"}, TOKEN, {"n": i})
        return lookup.get_span_context().span_id, store.get_span_context().span_id

    parents = await asyncio.gather(*(job(i) for i in range(8)))
    await client.get(METHOD, {"photo_id": "untraced"}, TOKEN)  # outside any span: no server span
    spans = EXPORTER.get_finished_spans()
    served = [s for s in spans if s.name in (telemetry.SPAN_CACHE_SERVE_GET, telemetry.SPAN_CACHE_SERVE_PUT)]
    assert len(served) == 16
    by_parent = {s.parent.span_id: s for s in served if s.parent is not None}
    for lookup_id, store_id in parents:
        get, put = by_parent[lookup_id], by_parent[store_id]
        assert (get.name, put.name) == (telemetry.SPAN_CACHE_SERVE_GET, telemetry.SPAN_CACHE_SERVE_PUT)
        assert get.kind == put.kind == SpanKind.SERVER
        assert get.attributes is not None and put.attributes is not None
        assert get.attributes[telemetry.ATTR_CACHE_OUTCOME] == "miss"
        assert put.attributes[telemetry.ATTR_CACHE_OUTCOME] == "stored"
        assert get.attributes[telemetry.ATTR_METHOD] == METHOD
    lookups = {s.context.span_id: s for s in spans if s.name == telemetry.SPAN_CACHE_LOOKUP}
    for span in served:
        assert span.parent is not None
        if span.parent.span_id in lookups:
            assert span.context.trace_id == lookups[span.parent.span_id].context.trace_id
    # The batch call itself opens no span (it would be a trace of its own per message).
    assert not [s for s in spans if "Exchange" in s.name]


async def test_stopping_the_service_ends_the_stream_at_once_and_the_client_comes_back(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    port = free_port()
    first = CacheApp(Settings.from_env(env={}, **{**_settings(cache_redis_url).__dict__, "cache_port": port}))
    await first.start()
    client = CacheClient(f"127.0.0.1:{port}", 0.5)
    try:
        await client.put(METHOD, {"photo_id": "1"}, TOKEN, {"v": 1})
        assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) == {"v": 1}
        started = time.monotonic()
        await first.stop(10.0)
        assert time.monotonic() - started < 2  # the idle stream did not hold the stop for its grace
        # No cache: a miss, quickly, and never an exception.
        started = time.monotonic()
        assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) is None
        await client.put(METHOD, {"photo_id": "2"}, TOKEN, {"v": 2})
        assert time.monotonic() - started < 1.5
        second = CacheApp(
            Settings.from_env(env={}, **{**_settings(cache_redis_url).__dict__, "cache_port": port})
        )
        await second.start()
        try:
            deadline = time.monotonic() + 10
            while await client.get(METHOD, {"photo_id": "1"}, TOKEN) != {"v": 1}:
                assert time.monotonic() < deadline, "the client never reached the new service"
                await asyncio.sleep(0.1)
        finally:
            await second.stop(1.0)
    finally:
        await client.close()


async def test_a_slow_cache_is_a_miss_within_the_timeout(app: CacheApp, cache_redis: redisio.Redis) -> None:
    client = CacheClient(f"127.0.0.1:{app.port}", 0.2)
    try:
        await client.put(METHOD, {"photo_id": "1"}, TOKEN, {"v": 1})
        await cache_redis.client_pause(1500)
        started = time.monotonic()
        assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) is None
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(1.5)
        assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) == {"v": 1}
    finally:
        await client.close()


async def test_a_redis_outage_misses_gets_refuses_puts_and_recovers_with_the_scripts(tmp_path: Path) -> None:
    redis = redis_server("cache", tmp_path).start()
    app = CacheApp(_settings(f"redis://127.0.0.1:{redis.port}/0"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(1, "1", b"v")]))
            redis.stop()
            down = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(1, "1"), _put(2, "2", b"w")]))
            assert down.results[0].WhichOneof("result") == "get" and not down.results[0].get.hit
            assert down.results[1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            # Back, empty and without our scripts: the batch reloads them.
            redis.start()
            back = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_put(1, "1", b"again")]))
            assert back.results[0].put.stored
            again = await stub.Exchange(cache_pb2.CacheBatchRequest(ops=[_get(1, "1")]))
            assert again.results[0].get.value == b"again"
    finally:
        await app.stop(1.0)
        redis.stop()


async def test_the_client_without_a_service_answers_misses_and_never_raises() -> None:
    client = CacheClient(f"127.0.0.1:{free_port()}", 0.3)
    try:
        started = time.monotonic()
        got = await asyncio.gather(*(client.get(METHOD, {"photo_id": str(i)}, TOKEN) for i in range(10)))
        await client.put(METHOD, {"photo_id": "1"}, TOKEN, {"v": 1})
        assert got == [None] * 10
        assert time.monotonic() - started < 1.0
    finally:
        await client.close()


async def test_stats_and_metrics_count_batched_operations(app: CacheApp, client: CacheClient) -> None:
    hits = _sample("flickrhub_cache_lookups_total", method=METHOD, outcome="hit")
    stored = _sample("flickrhub_cache_requests_total", op="put", method_class="read", outcome="stored")
    await client.put(METHOD, {"photo_id": "s"}, TOKEN, {"v": 1})
    await asyncio.gather(*(client.get(METHOD, {"photo_id": "s"}, TOKEN) for _ in range(3)))
    assert _sample("flickrhub_cache_lookups_total", method=METHOD, outcome="hit") - hits == 3
    assert (
        _sample("flickrhub_cache_requests_total", op="put", method_class="read", outcome="stored") - stored
        == 1
    )
    await app.store.flush_stats()
    redis: Any = app.redis
    counts = await redis.hgetall(keys.CACHE_STATS)
    assert counts[b"hits"] == b"3" and counts[b"puts"] == b"1" and counts[b"hits:" + METHOD.encode()] == b"3"


async def test_while_a_batch_is_unanswered_the_next_one_gathers(
    app: CacheApp, cache_redis: redisio.Redis
) -> None:
    client = CacheClient(f"127.0.0.1:{app.port}", 2.0, window_s=0.002)
    try:
        await client.put(METHOD, {"photo_id": "1"}, TOKEN, {"v": 1})
        batches = _sample("flickrhub_cache_batch_ops_count", rpc="ExchangeStream")
        await cache_redis.client_pause(400)  # the first batch waits inside Redis
        first = asyncio.create_task(client.get(METHOD, {"photo_id": "1"}, TOKEN))
        await asyncio.sleep(0.05)
        later = []
        for i in range(20):  # well apart: each would have been a batch of its own
            later.append(asyncio.create_task(client.get(METHOD, {"photo_id": str(i)}, TOKEN)))
            await asyncio.sleep(0.01)
        assert await first == {"v": 1}
        got = await asyncio.gather(*later)
        assert got[1] == {"v": 1} and got.count(None) == 19
        assert _sample("flickrhub_cache_batch_ops_count", rpc="ExchangeStream") - batches == 2
    finally:
        await client.close()


async def test_closing_the_client_answers_what_waits_with_misses(app: CacheApp) -> None:
    client = CacheClient(f"127.0.0.1:{app.port}", 0.5, window_s=0.1)
    waiting = asyncio.create_task(client.get(METHOD, {"photo_id": "1"}, TOKEN))
    await asyncio.sleep(0.01)
    await client.close()
    assert await waiting is None
    assert await client.get(METHOD, {"photo_id": "1"}, TOKEN) is None  # closed: a miss at once
