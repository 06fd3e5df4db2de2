"""The mover spends the Flickr budget fairly and pauses while a breaker is open."""

from __future__ import annotations

import asyncio
from typing import Any

from common.breaker import OPEN
from common.flickr_guard import FlickrGuard
from flickrhub.v1 import jobs_pb2
from sandbox.state import Fault
from tests.helpers.inproc import DEMO_USER, running_stack, seed_demo_token, stack_settings


async def test_moves_never_outrun_the_hourly_budget(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    # 3,600 an hour with a burst of 2: two calls at once, then one a second.
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        flickr_budget_per_hour=3602,
        flickr_budget_burst=2,
    )
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        for i in range(8):
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"b": str(i)})
            )
        await asyncio.sleep(2.5)
        calls = [c for c in stack.sandbox.calls if c.method == "flickr.test.echo"]
    assert 2 <= len(calls) <= 5  # 2 at once, then about one a second: never all 8


async def test_a_flickr_outage_pauses_moving_instead_of_burning_attempts(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        breaker_flickr_threshold=3,
        breaker_flickr_open_s=2.0,
        worker_max_attempts=10,
    )
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        stack.sandbox.faults.append(Fault(id="down", method="*", kind="http_status", status=503, times=-1))
        ids = [
            (
                await stack.jobs.SubmitJob(
                    jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.test.echo", params={"o": str(i)}
                    )
                )
            ).job_id
            for i in range(6)
        ]
        guard = FlickrGuard(redis, stack.settings)
        for _ in range(100):
            if (await guard.flickr_breaker.snapshot()).get("state") == OPEN:
                break
            await asyncio.sleep(0.05)
        assert (await guard.flickr_breaker.snapshot()).get("state") == OPEN
        await asyncio.sleep(0.3)  # calls already in flight when it opened finish
        calls_when_open = len(stack.sandbox.calls)
        await asyncio.sleep(1.0)
        # While open (2 s), nothing more reaches Flickr: no attempt is burnt.
        assert len(stack.sandbox.calls) == calls_when_open
        stack.sandbox.faults.clear()  # Flickr recovers; the breaker half-opens, probes, closes
        states = []
        for job_id in ids:
            for _ in range(300):
                job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
                if job.state in (jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED):
                    break
                await asyncio.sleep(0.05)
            states.append(job.state)
            assert job.attempts < 10
    assert set(states) == {jobs_pb2.JOB_STATE_COMPLETED}


async def test_queue_stats_show_the_breakers(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    from flickrhub.v1 import admin_pb2, admin_pb2_grpc

    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0) as stack:
        guard = FlickrGuard(redis, stack.settings)
        for _ in range(stack.settings.breaker_flickr_threshold):
            await guard.flickr_breaker.failure()
        admin = admin_pb2_grpc.AdminServiceStub(stack.channel)
        stats = await admin.GetQueueStats(admin_pb2.GetQueueStatsRequest())
    by_name = {b.name: b for b in stats.breakers}
    assert stats.paused
    assert by_name["flickr"].state == "open"
    assert 0 < by_name["flickr"].retry_after_ms <= 30_000
    assert by_name["flickr"].opened_total == 1
