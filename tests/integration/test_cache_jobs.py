"""The cache as jobs see it: bypass, write invalidation, admin invalidation, outages and warming.

The whole pipeline runs in-process (tests.helpers.inproc) against the sandbox;
the sandbox's call log says whether Flickr was asked or the cache answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from common import keys, redisio
from common.settings import Settings
from devstack.stores import redis_server
from edge.app import create_app
from flickrhub.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import bad_fields, result_of

OTHER_USER = "cache-other-user"
FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


async def _run(
    stack: Stack, method: str, user: str = DEMO_USER, bypass: bool = False, **params: str
) -> jobs_pb2.Job:
    """Submit one job and wait for its final state."""
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=user, method=method, params=params, cache_bypass=bypass)
    )
    deadline = time.monotonic() + 15
    while (job := await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=resp.job_id))).state not in FINAL:
        assert time.monotonic() < deadline, f"job still {jobs_pb2.JobState.Name(job.state)}"
        await asyncio.sleep(0.03)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    return job


def _calls(stack: Stack, method: str, **params: str) -> int:
    """How often the sandbox (Flickr) was asked `method` with at least these params."""
    return sum(
        1
        for c in stack.sandbox.calls
        if c.method == method and all(c.params.get(k) == v for k, v in params.items())
    )


@pytest.fixture
def settings(redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str) -> Settings:
    return stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)


@pytest.fixture
async def stack(settings: Settings, redis: Any, cache_redis: Any) -> AsyncIterator[Stack]:
    await seed_demo_token(settings)
    async with running_stack(settings) as running:
        yield running


async def test_a_bypassed_job_goes_to_flickr_and_says_so_in_its_result(stack: Stack) -> None:
    first = await _run(stack, "flickr.photos.getInfo", photo_id="12345")
    assert (first.from_cache, first.cache_bypassed) == (False, False)
    bypassed = await _run(stack, "flickr.photos.getInfo", bypass=True, photo_id="12345")
    assert (bypassed.from_cache, bypassed.cache_bypassed) == (False, True)
    assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 2
    # The cache still holds the first answer: a normal job is served from it.
    cached = await _run(stack, "flickr.photos.getInfo", photo_id="12345")
    assert (cached.from_cache, cached.cache_bypassed) == (True, False)
    assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 2


async def test_a_successful_write_drops_that_tokens_cached_reads_only(
    stack: Stack, settings: Settings
) -> None:
    await seed_demo_token(settings, OTHER_USER)
    for user in (DEMO_USER, OTHER_USER):
        await _run(stack, "flickr.photos.getInfo", user=user, photo_id="12345")
        assert (await _run(stack, "flickr.photos.getInfo", user=user, photo_id="12345")).from_cache
    await _run(stack, "flickr.photos.setMeta", photo_id="12345", title="renamed by a write")
    # The writer's token reads Flickr again and sees its write; the other token keeps its entry.
    after = await _run(stack, "flickr.photos.getInfo", photo_id="12345")
    assert not after.from_cache
    assert result_of(after)["photo"]["title"]["_content"] == "renamed by a write"
    assert (await _run(stack, "flickr.photos.getInfo", user=OTHER_USER, photo_id="12345")).from_cache
    assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 3


async def test_admins_invalidate_a_token_or_one_of_its_methods_over_grpc_and_rest(
    stack: Stack, settings: Settings
) -> None:
    demo = await seed_demo_token(settings)
    other = await seed_demo_token(settings, OTHER_USER)
    for method in ("flickr.photos.getInfo", "flickr.photos.getSizes"):
        for user in (DEMO_USER, OTHER_USER):
            await _run(stack, method, user=user, photo_id="12345")
    edge_settings = Settings.from_env(
        env={}, **{**stack.settings.__dict__, "gateway_addr": f"127.0.0.1:{stack.gateway.port}"}
    )
    runner = web.AppRunner(create_app(edge_settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert stack.keys is not None
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/cache/invalidate"
    query = {"token_id": demo.token_id_hash, "method": "flickr.photos.getInfo"}
    try:
        async with aiohttp.ClientSession() as http:
            # Admin credential only: none is 401, a client key 403; neither invalidates anything.
            async with http.post(url, params=query) as resp:
                assert resp.status == 401, await resp.text()
            client = {"Authorization": f"Bearer {stack.keys.client_key}"}
            async with http.post(url, params=query, headers=client) as resp:
                assert resp.status == 403, await resp.text()
                assert (await resp.json())["error"]["code"] == "ERR_FORBIDDEN"
            assert (await _run(stack, "flickr.photos.getInfo", photo_id="12345")).from_cache
            async with http.post(url, params=query, headers=stack.auth_headers) as resp:
                assert resp.status == 200, await resp.text()
                data = (await resp.json())["data"]
            assert data["token_id"] == demo.token_id_hash and int(data["generation"]) > 0
            async with http.post(url, params={"token_id": "NOT-A-TOKEN"}, headers=stack.auth_headers) as resp:
                assert resp.status == 400
                assert "token_id" in await resp.text()
    finally:
        await runner.cleanup()
    assert not (await _run(stack, "flickr.photos.getInfo", photo_id="12345")).from_cache
    assert (await _run(stack, "flickr.photos.getSizes", photo_id="12345")).from_cache
    assert (await _run(stack, "flickr.photos.getInfo", user=OTHER_USER, photo_id="12345")).from_cache

    admin = admin_pb2_grpc.AdminServiceStub(stack.channel)
    answer = await admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(token_id=other.token_id_hash))
    assert answer.generation > 0 and answer.method == ""
    for method in ("flickr.photos.getInfo", "flickr.photos.getSizes"):
        assert not (await _run(stack, method, user=OTHER_USER, photo_id="12345")).from_cache
    assert (await _run(stack, "flickr.photos.getSizes", photo_id="12345")).from_cache
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(token_id="", method="photos.getInfo"))
    assert bad_fields(err.value) == {"token_id", "method"}


async def test_a_cache_outage_turns_hits_into_misses_and_never_fails_a_job(
    redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any, tmp_path: Path
) -> None:
    cache_redis = redis_server("cache", tmp_path / "cache-redis").start()
    settings = stack_settings(redis_url, f"redis://127.0.0.1:{cache_redis.port}/0", mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    try:
        async with running_stack(settings) as stack:
            await _run(stack, "flickr.photos.getInfo", photo_id="12345")
            assert (await _run(stack, "flickr.photos.getInfo", photo_id="12345")).from_cache
            cache_redis.stop()  # the cache service stays up; its Redis is gone
            for _ in range(3):
                job = await _run(stack, "flickr.photos.getInfo", photo_id="12345")
                assert not job.from_cache and result_of(job)["stat"] == "ok"
            assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 4
    finally:
        cache_redis.stop()
    # No cache service at all (nothing listens on its address): jobs still complete from Flickr.
    async with running_stack(settings, cache=False) as stack:
        for _ in range(2):
            job = await _run(stack, "flickr.photos.getInfo", photo_id="12345")
            assert not job.from_cache and result_of(job)["stat"] == "ok"


async def test_warming_refreshes_a_popular_entry_before_it_expires_and_not_an_unpopular_one(
    redis_url: str,
    cache_redis_url: str,
    mongo_url: str,
    mongo_db_name: str,
    redis: Any,
    cache_redis: redisio.Redis,
) -> None:
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        cache_ttl_overrides="flickr.photos.getInfo=6",
        cache_warm_enabled=True,
        cache_warm_interval_s=0.3,
        cache_warm_before_s=2,
        cache_warm_min_requests=3,
    )
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        # The first answer is stored somewhere between these two instants (a loaded machine may take
        # a while over the job): the bounds below hold wherever it fell.
        before_first = time.monotonic()
        await _run(stack, "flickr.photos.getInfo", photo_id="12345")
        after_first = time.monotonic()
        for _ in range(2):  # one miss and two hits: requested three times
            await _run(stack, "flickr.photos.getInfo", photo_id="12345")
        await _run(stack, "flickr.photos.getInfo", photo_id="12347")  # requested once
        unpopular_at = time.monotonic()
        assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 1
        # With 2 s or less of its 6 s left the popular entry is refetched by a worker (not by a job).
        while _calls(stack, "flickr.photos.getInfo", photo_id="12345") < 2:
            assert time.monotonic() - after_first < 6, "the popular entry was not refreshed before it expired"
            await asyncio.sleep(0.05)
        assert time.monotonic() - before_first >= 3.5  # not before it was near expiry
        await asyncio.sleep(max(0.0, unpopular_at + 6.5 - time.monotonic()))  # past the first answers' TTL
        assert (await _run(stack, "flickr.photos.getInfo", photo_id="12345")).from_cache
        assert not (await _run(stack, "flickr.photos.getInfo", photo_id="12347")).from_cache
        assert _calls(stack, "flickr.photos.getInfo", photo_id="12347") == 2
        assert (
            await cache_redis.zscore(
                keys.CACHE_HOT,
                keys.cache_canonical(
                    "flickr.photos.getInfo",
                    {"photo_id": "12345"},
                    (await seed_demo_token(settings)).token_id_hash,
                ),
            )
            is not None
        )


async def test_warming_is_off_by_default_and_then_counts_and_refreshes_nothing(
    redis_url: str,
    cache_redis_url: str,
    mongo_url: str,
    mongo_db_name: str,
    redis: Any,
    cache_redis: redisio.Redis,
) -> None:
    assert Settings.from_env(env={}).cache_warm_enabled is False
    settings = stack_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, cache_ttl_overrides="flickr.photos.getInfo=2"
    )
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        assert all(worker.warmer is None for worker in stack.workers)
        for _ in range(5):
            await _run(stack, "flickr.photos.getInfo", photo_id="12345")
        await asyncio.sleep(2.5)
        assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 1
        assert not (await _run(stack, "flickr.photos.getInfo", photo_id="12345")).from_cache
        assert _calls(stack, "flickr.photos.getInfo", photo_id="12345") == 2
        assert not await cache_redis.exists(keys.CACHE_HOT)
        assert not await redis.exists(keys.CACHE_WARM_LOCK)
