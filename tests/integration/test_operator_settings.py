"""Settings an operator tunes take effect where they say: each against the real servers it configures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from cache.store import CacheStore
from common import keys, redisio
from common.mongo import AUDIT_LOG, Mongo
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import cache_pb2, jobs_pb2, jobs_pb2_grpc, keys_pb2, keys_pb2_grpc
from gateway import idempotency
from mover.mover import Mover
from tests.helpers.cache import running_cache
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import reason

ECHO = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"a": "1"})
DEFAULT_RATE = 3
IDEMPOTENCY_TTL_S = 2
WATCH_POLL_S = 0.2


@dataclass
class Gateway:
    """A gateway alone (no mover, worker or cache) with the settings under test, and its token."""

    stack: Stack
    token_id_hash: str

    @property
    def admin(self) -> keys_pb2_grpc.ApiKeyServiceAsyncStub:
        return keys_pb2_grpc.ApiKeyServiceStub(self.stack.channel)


@pytest_asyncio.fixture
async def gateway(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> AsyncIterator[Gateway]:
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        api_key_default_rate_per_min=DEFAULT_RATE,
        idempotency_ttl_s=IDEMPOTENCY_TTL_S,
        watch_poll_s=WATCH_POLL_S,
        job_hot_ttl_s=0,  # status reads go to MongoDB, where the watch test changes a job
    )
    token = await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        yield Gateway(stack, token.token_id_hash)


async def test_a_key_without_a_limit_of_its_own_gets_the_configured_default(gateway: Gateway) -> None:
    plain = await gateway.admin.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="plain", user_ids=[DEMO_USER]))
    own = await gateway.admin.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="own", user_ids=[DEMO_USER], rate_limit_per_min=DEFAULT_RATE + 2)
    )
    assert plain.key.rate_limit_per_min == DEFAULT_RATE  # API_KEY_DEFAULT_RATE_PER_MIN, not 1000
    assert own.key.rate_limit_per_min == DEFAULT_RATE + 2
    # The document keeps "no limit of its own", so a later change of the setting reaches the key.
    doc = await gateway.stack.mongo.api_keys.find_one({"key_id": plain.key.key_id})
    assert doc is not None and doc["rate_limit_per_min"] == 0
    listed = await gateway.admin.ListApiKeys(keys_pb2.ListApiKeysRequest())
    assert {k.key_id: k.rate_limit_per_min for k in listed.keys}[plain.key.key_id] == DEFAULT_RATE

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.stack.gateway.port}") as raw:
        jobs = jobs_pb2_grpc.JobServiceStub(raw)
        for secret, allowed in ((plain, DEFAULT_RATE), (own, DEFAULT_RATE + 2)):
            metadata = [("authorization", f"Bearer {secret.api_key}")]
            for _ in range(allowed):
                await jobs.SubmitJob(ECHO, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await jobs.SubmitJob(ECHO, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason(err.value) == "RATE_LIMITED"


async def test_an_idempotency_key_is_held_for_the_configured_ttl(gateway: Gateway, redis: Any) -> None:
    request = jobs_pb2.SubmitJobRequest()
    request.CopyFrom(ECHO)
    request.idempotency_key = "order-17"
    first = await gateway.stack.jobs.SubmitJob(request)
    ttl = await redis.ttl(idempotency.redis_key(gateway.token_id_hash, "order-17"))
    assert 0 < ttl <= IDEMPOTENCY_TTL_S  # IDEMPOTENCY_TTL_S, not 24 h
    assert (await gateway.stack.jobs.SubmitJob(request)).job_id == first.job_id
    await asyncio.sleep(IDEMPOTENCY_TTL_S + 0.5)
    assert (await gateway.stack.jobs.SubmitJob(request)).job_id != first.job_id


async def test_a_watch_rereads_its_job_every_watch_poll_s_without_an_event(gateway: Gateway) -> None:
    job = await gateway.stack.jobs.SubmitJob(ECHO)
    watch = gateway.stack.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id))
    updates = aiter(watch)
    assert (await anext(updates)).state == jobs_pb2.JOB_STATE_QUEUED
    # Changed behind the gateway's back: no worker publishes an event for it.
    await gateway.stack.mongo.jobs.update_one({"job_id": job.job_id}, {"$set": {"status": "cancelled"}})
    last = await asyncio.wait_for(anext(updates), timeout=10 * WATCH_POLL_S)  # 5 s by default
    assert last.state == jobs_pb2.JOB_STATE_CANCELLED


async def test_the_dead_letter_stream_is_trimmed_to_dead_letters_max(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, dead_letters_max=10)
    await redis.zadd(keys.DELAYED, {f"not json {i}": 0 for i in range(300)})
    assert await Mover(settings, redis, "m").pump_delayed() == 300
    # MAXLEN ~ trims whole stream nodes (100 entries each): about 10 kept, never all 300.
    assert 10 <= await redis.xlen(keys.DEAD_LETTERS) < 200


async def test_the_audit_logs_ttl_follows_audit_retention_days_and_changes_in_place(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, mongo_db: Any
) -> None:
    async def ttl_after_start(days: float) -> Any:
        settings = stack_settings(
            redis_url, cache_redis_url, mongo_url, mongo_db_name, audit_retention_days=days
        )
        mongo = Mongo.from_settings(settings)
        try:
            await mongo.ensure_indexes()
            held = {ix["name"]: ix async for ix in await mongo.db[AUDIT_LOG].list_indexes()}
            return held["retention_ttl"]["expireAfterSeconds"]
        finally:
            await mongo.close()

    assert await ttl_after_start(2) == 2 * 86400
    assert await ttl_after_start(30) == 30 * 86400  # collMod: the index is not created again
    assert await ttl_after_start(30) == 30 * 86400


async def test_the_edge_refuses_a_json_body_over_edge_max_body_bytes() -> None:
    settings = Settings.from_env({"GATEWAY_ADDR": "127.0.0.1:9", "EDGE_MAX_BODY_BYTES": "1000"})
    runner = web.AppRunner(edge_app.create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            for size, refused in ((900, False), (2000, True)):
                body = json.dumps(
                    {"user_id": DEMO_USER, "method": "flickr.test.echo", "params": {"a": "x" * size}}
                )
                headers = {"Content-Type": "application/json", "x-api-key": "fhk_abcd_" + "s" * 43}
                async with http.post(f"http://127.0.0.1:{port}/v1/jobs", data=body, headers=headers) as resp:
                    assert (resp.status == 413) is refused, (size, resp.status)
                    if refused:
                        assert "larger than 1000" in (await resp.json())["message"]
    finally:
        await runner.cleanup()


async def test_the_popularity_set_keeps_cache_hot_keep_factor_times_the_top(cache_redis_url: str) -> None:
    settings = Settings.from_env(
        env={},
        cache_redis_url=cache_redis_url,
        cache_warm_enabled=True,
        cache_warm_top=2,
        cache_hot_keep_factor=3,
    )
    redis = redisio.client(cache_redis_url, decode=False)
    try:
        await redis.zadd(keys.CACHE_HOT, {f"member-{i}": i for i in range(1, 11)})
        await CacheStore(redis, settings).maintain_hot()
        kept = await redis.zrange(keys.CACHE_HOT, 0, -1)
        assert kept == [b"member-5", b"member-6", b"member-7", b"member-8", b"member-9", b"member-10"]
    finally:
        await redis.aclose()


async def test_the_cache_service_queues_calls_past_cache_redis_max_in_flight(cache_redis_url: str) -> None:
    settings = Settings.from_env(
        env={},
        cache_port=0,
        cache_metrics_port=-1,
        cache_redis_url=cache_redis_url,
        cache_redis_max_in_flight=2,
    )
    async with running_cache(settings) as (app, stub):
        assert app.redis.connection_pool.max_connections == 2
        key = cache_pb2.CacheKey(
            method="flickr.photos.getInfo", params={"photo_id": "1"}, token_id_hash="a" * 32
        )
        await stub.Put(cache_pb2.CachePutRequest(key=key, value=b"v", ttl_seconds=60))
        # Many more lookups at once than connections: they wait their turn, none fails for want of one.
        answers = await asyncio.gather(*(stub.Get(cache_pb2.CacheGetRequest(key=key)) for _ in range(40)))
        assert all(a.hit and a.value == b"v" for a in answers)
