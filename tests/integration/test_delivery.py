"""Delivery guarantees of the moving and executing loops, against real Redis and MongoDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest_asyncio
from google.protobuf import json_format

from common import keys, redisio
from flickrhub.v1 import jobs_pb2
from mover.app import MoverApp
from mover.mover import Mover
from sandbox.state import Fault
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from worker.app import WorkerApp
from worker.consumer import StreamConsumer


@pytest_asyncio.fixture
async def quiet_stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    """A stack with no mover and no worker running: tests start their own.

    A dead worker's entry is taken over after 1.5 s idle, not 3 s: every takeover test waits for it.
    """
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        mover_claim_idle_s=0.5,
        worker_visibility_timeout_s=1.5,
    )
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        yield stack


async def _final(stack: Stack, job_id: str, timeout: float = 15.0) -> jobs_pb2.Job:
    for _ in range(int(timeout / 0.05)):
        job: jobs_pb2.Job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in (jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never finished")


async def test_entries_a_dead_mover_read_are_claimed_and_moved_once(quiet_stack: Stack, redis: Any) -> None:
    stack = quiet_stack
    ids = [
        (
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"n": str(i)})
            )
        ).job_id
        for i in range(5)
    ]
    token = next(iter(await redis.smembers(keys.ACTIVE_TOKENS)))
    stream = keys.token_stream(token)
    await redis.xgroup_create(stream, keys.MOVER_GROUP, id="0")
    # A mover reads the entries and dies before moving them: they sit in its pending list.
    read = await redis.xreadgroup(keys.MOVER_GROUP, "dead-mover", {stream: ">"}, count=10)
    assert len(read[0][1]) == 5
    mover = MoverApp(stack.settings, consumer="live-mover")
    worker = WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        done = [await _final(stack, job_id) for job_id in ids]
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)
    assert {j.state for j in done} == {jobs_pb2.JOB_STATE_COMPLETED}
    echoed = sorted(c.params["n"] for c in stack.sandbox.calls if c.method == "flickr.test.echo")
    assert echoed == [str(i) for i in range(5)]
    assert await redis.xlen(stream) == 0
    assert await redis.xpending(stream, keys.MOVER_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_duplicate_work_entry_never_runs_a_job_twice(quiet_stack: Stack, redis: Any) -> None:
    stack = quiet_stack
    mover = MoverApp(stack.settings, consumer="m")
    await mover.start()
    job_id = (
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"dup": "1"})
        )
    ).job_id
    work = keys.work_stream("rest")
    for _ in range(100):
        if await redis.xlen(work):
            break
        await asyncio.sleep(0.02)
    await mover.stop(2.0)
    # A mover that crashed between append and acknowledge appends the same entry again.
    ((_entry_id, fields),) = await redis.xrange(work)
    await redis.xadd(work, fields)
    worker = WorkerApp(stack.settings, consumer="w")
    await worker.start()
    try:
        job = await _final(stack, job_id)
        # The duplicate found the job running under a live lease and was left pending; once claimed
        # again past the visibility timeout it finds the job completed and is acknowledged.
        for _ in range(200):
            if await redis.xlen(work) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(2.0)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED
    assert job.attempts == 1
    assert len([c for c in stack.sandbox.calls if c.params.get("dup") == "1"]) == 1
    assert await redis.xlen(work) == 0


async def test_sigterm_lets_a_running_job_finish_within_the_grace_period(quiet_stack: Stack) -> None:
    stack = quiet_stack
    stack.sandbox.faults.append(
        Fault(id="slow", method="flickr.test.echo", kind="latency", latency_ms=800, times=1)
    )
    mover = MoverApp(stack.settings, consumer="m")
    worker = WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    job_id = (
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
    ).job_id
    for _ in range(200):
        doc = await stack.store.get(job_id)
        if doc and doc["status"] == "running":
            break
        await asyncio.sleep(0.02)
    await worker.stop(5.0)
    await mover.stop(2.0)
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED


async def test_an_unfinished_job_is_handed_back_and_completed_by_another_worker(quiet_stack: Stack) -> None:
    stack = quiet_stack
    stack.sandbox.faults.append(
        Fault(id="slower", method="flickr.test.echo", kind="latency", latency_ms=3000, times=1)
    )
    mover = MoverApp(stack.settings, consumer="m")
    first = WorkerApp(stack.settings, consumer="first")
    await mover.start()
    await first.start()
    job_id = (
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
    ).job_id
    for _ in range(200):
        doc = await stack.store.get(job_id)
        if doc and doc["status"] == "running":
            break
        await asyncio.sleep(0.02)
    await first.stop(0.2)  # grace shorter than the call: the entry is handed back
    second = WorkerApp(stack.settings, consumer="second")
    await second.start()
    try:
        job = await _final(stack, job_id, timeout=20)
    finally:
        await second.stop(2.0)
        await mover.stop(2.0)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED
    doc = await stack.store.get(job_id)
    assert doc is not None and doc["worker_id"] == "second"


async def test_metrics_endpoint_exposes_flickrhub_metrics(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, gateway_metrics_port=0)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=1, workers=1, cache=False) as stack:
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
        url = f"http://127.0.0.1:{stack.gateway.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
    assert 'flickrhub_gateway_jobs_submitted_total{outcome="accepted"}' in text
    assert "flickrhub_mover_moved_total" in text


async def test_readiness_follows_redis_while_liveness_stays_serving(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from common.service import READINESS
    from common.settings import Settings
    from devstack.stores import redis_server

    redis = redis_server("queue", tmp_path / "r").start()
    settings = Settings.from_env(
        env={},
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        mover_port=0,
        mover_metrics_port=-1,
        readiness_interval_s=0.2,
    )
    mover = MoverApp(settings, consumer="probe")
    await mover.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mover.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(name: str) -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest(service=name))).status)

            assert await status(READINESS) == health_pb2.HealthCheckResponse.SERVING
            redis.stop()
            for _ in range(50):
                if await status(READINESS) == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await status(READINESS) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status("") == health_pb2.HealthCheckResponse.SERVING  # liveness: do not restart
            redis.start()
            for _ in range(80):
                if await status(READINESS) == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await status(READINESS) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await mover.stop(2.0)
        redis.stop()


async def test_a_job_not_started_within_its_maximum_age_expires_without_calling_flickr(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, job_max_age_s=0.3)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        job_id = (
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"late": "1"})
            )
        ).job_id
        await asyncio.sleep(0.6)  # nobody moved it in time
        mover, worker = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="w")
        await mover.start()
        await worker.start()
        try:
            for _ in range(100):
                job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
                if job.state == jobs_pb2.JOB_STATE_EXPIRED:
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop(2.0)
            await mover.stop(2.0)
    assert job.state == jobs_pb2.JOB_STATE_EXPIRED
    assert job.error.code == "EXPIRED"
    assert job.attempts == 0
    assert not [c for c in stack.sandbox.calls if c.params.get("late") == "1"]


async def test_a_write_whose_worker_died_mid_call_is_never_sent_twice(quiet_stack: Stack) -> None:
    stack = quiet_stack
    stack.sandbox.faults.append(
        Fault(id="slow", method="flickr.photos.setMeta", kind="latency", latency_ms=1500, times=1)
    )
    mover = MoverApp(stack.settings, consumer="m")
    first = WorkerApp(stack.settings, consumer="first")
    await mover.start()
    await first.start()
    req = jobs_pb2.SubmitJobRequest(
        user_id=DEMO_USER, method="flickr.photos.setMeta", params={"photo_id": "123", "title": "once"}
    )
    job_id = (await stack.jobs.SubmitJob(req)).job_id
    for _ in range(200):
        doc = await stack.store.get(job_id)
        if doc and doc["status"] == "running":
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the request is on the wire
    await first.stop(0.1)  # dies mid-write: its entry and its lease are left behind
    # The slow call is still carried out at the sandbox, after its worker died.
    for _ in range(100):
        if stack.sandbox.photo_meta.get("123", {}).get("title") == "once":
            break
        await asyncio.sleep(0.05)
    second = WorkerApp(stack.settings, consumer="second")
    await second.start()
    try:
        job = await _final(stack, job_id, timeout=20)
    finally:
        await second.stop(2.0)
        await mover.stop(2.0)
    # The slow call was carried out after its worker died: the takeover reads the title and stops.
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert json_format.MessageToDict(job.result) == {"stat": "ok", "reconciled": True}
    assert job.attempts == 2
    assert len([c for c in stack.sandbox.calls if c.method == "flickr.photos.setMeta"]) == 1
    assert stack.sandbox.photo_meta["123"]["title"] == "once"


async def _taken_over(stack: Stack, method: str, params: dict[str, str]) -> jobs_pb2.Job:
    """Run a job whose first run's worker claimed it and died (the claim's lease runs out at once)."""
    req = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method=method, params=params)
    job_id = (await stack.jobs.SubmitJob(req)).job_id
    assert await stack.store.claim(job_id, "worker-that-died", 0, 0.05, expected_rev=0) is not None
    await asyncio.sleep(0.1)
    mover = MoverApp(stack.settings, consumer="m")
    worker = WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        return await _final(stack, job_id)
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)


def _calls(stack: Stack, method: str) -> int:
    return len([c for c in stack.sandbox.calls if c.method == method])


async def test_a_taken_over_write_already_on_flickr_completes_without_being_sent(quiet_stack: Stack) -> None:
    stack = quiet_stack
    # The dead worker's setMeta reached Flickr; only its answer was lost.
    stack.sandbox.photo_meta["123"] = {"title": "applied", "description": "seen"}

    job = await _taken_over(
        stack, "flickr.photos.setMeta", {"photo_id": "123", "title": "applied", "description": "seen"}
    )

    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert json_format.MessageToDict(job.result) == {"stat": "ok", "reconciled": True}
    assert job.attempts == 2
    assert _calls(stack, "flickr.photos.setMeta") == 0
    assert _calls(stack, "flickr.photos.getInfo") == 1


async def test_a_taken_over_write_absent_from_flickr_is_sent_once(quiet_stack: Stack) -> None:
    stack = quiet_stack

    job = await _taken_over(stack, "flickr.photos.setMeta", {"photo_id": "123", "title": "missing"})

    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert json_format.MessageToDict(job.result) == {"stat": "ok"}  # Flickr's own answer
    assert job.attempts == 2
    assert _calls(stack, "flickr.photos.getInfo") == 1
    assert _calls(stack, "flickr.photos.setMeta") == 1
    assert stack.sandbox.photo_meta["123"]["title"] == "missing"


async def test_a_taken_over_delete_already_done_completes_without_being_sent(quiet_stack: Stack) -> None:
    stack = quiet_stack
    stack.sandbox.deleted_photos.add("123")

    job = await _taken_over(stack, "flickr.photos.delete", {"photo_id": "123"})

    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert json_format.MessageToDict(job.result) == {"stat": "ok", "reconciled": True}
    assert _calls(stack, "flickr.photos.delete") == 0


async def test_a_taken_over_write_no_read_can_prove_ends_unknown_unsent(quiet_stack: Stack) -> None:
    stack = quiet_stack

    job = await _taken_over(stack, "flickr.photos.addTags", {"photo_id": "123", "tags": "once"})

    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.attempts) == ("WRITE_OUTCOME_UNKNOWN", 2)
    assert stack.sandbox.calls == []  # neither a read nor the write


async def test_a_taken_over_write_whose_read_fails_ends_unknown_unsent(quiet_stack: Stack) -> None:
    stack = quiet_stack
    stack.sandbox.faults.append(
        Fault(id="read-down", method="flickr.photos.getInfo", kind="http_status", status=503, times=-1)
    )

    job = await _taken_over(stack, "flickr.photos.setMeta", {"photo_id": "123", "title": "unsure"})

    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.attempts) == ("WRITE_OUTCOME_UNKNOWN", 2)
    assert _calls(stack, "flickr.photos.getInfo") == 1  # one read, not retried
    assert _calls(stack, "flickr.photos.setMeta") == 0
    assert "123" not in stack.sandbox.photo_meta


async def test_a_write_whose_answer_never_came_ends_unknown_and_is_not_retried(quiet_stack: Stack) -> None:
    stack = quiet_stack
    # The sandbox takes the write, then closes the connection without answering.
    stack.sandbox.faults.append(Fault(id="cut", method="flickr.photos.setMeta", kind="drop", times=1))
    mover = MoverApp(stack.settings, consumer="m")
    worker = WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        req = jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER, method="flickr.photos.setMeta", params={"photo_id": "123", "title": "cut"}
        )
        job = await _final(stack, (await stack.jobs.SubmitJob(req)).job_id)
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.attempts) == ("WRITE_OUTCOME_UNKNOWN", 1)
    assert len([c for c in stack.sandbox.calls if c.method == "flickr.photos.setMeta"]) == 1


async def test_a_drained_token_leaves_the_active_set_only_while_its_queue_is_empty(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    mover = Mover(settings, redis, "m")
    await redis.sadd(keys.ACTIVE_TOKENS, "empty", "busy")
    await redis.xadd(keys.token_stream("busy"), {"job": "1"})
    await mover._deactivate(["empty", "busy"])
    assert await redis.smembers(keys.ACTIVE_TOKENS) == {"busy"}


async def test_claiming_reaches_an_idle_entry_behind_a_long_run_of_busy_ones(redis: Any) -> None:
    stream, group = "test:claims", "g"
    await redisio.ensure_group(redis, stream, group)
    ids = [await redis.xadd(stream, {"n": str(i)}) for i in range(60)]
    await redis.xreadgroup(group, "dead", {stream: ">"}, count=100)
    await asyncio.sleep(0.3)
    # A live consumer keeps the first 59 fresh; only the last one is idle past the timeout.
    await redis.xclaim(stream, group, "live", 0, ids[:-1], justid=True)
    seen: list[str] = []

    async def handle(_stream: str, entry_id: str, _fields: dict[str, str]) -> None:
        seen.append(entry_id)

    consumer = StreamConsumer(
        redis, redis, [stream], group, "claimer", handle, concurrency=1, visibility_timeout_s=0.25
    )
    for _ in range(8):  # XAUTOCLAIM looks at COUNT*10 entries per call: 10 here
        await consumer.claim_idle()
        await asyncio.sleep(0)
    assert seen == [ids[-1]]


async def test_a_started_job_whose_worker_died_is_taken_over_not_stuck_past_its_maximum_age(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    # The run dies after the job started; its entry comes back only after the job's maximum age
    # (taken over 1.5 s after its last heartbeat, while the job is older than 1 s).
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        job_max_age_s=1.0,
        worker_visibility_timeout_s=1.5,
    )
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        stack.sandbox.faults.append(
            Fault(id="slow", method="flickr.test.echo", kind="latency", latency_ms=1500, times=1)
        )
        mover, first = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="first")
        await mover.start()
        await first.start()
        req = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"old": "1"})
        job_id = (await stack.jobs.SubmitJob(req)).job_id
        for _ in range(200):
            doc = await stack.store.get(job_id)
            if doc and doc["status"] == "running":
                break
            await asyncio.sleep(0.02)
        await first.stop(0.1)  # dies mid-call, past nothing yet
        await asyncio.sleep(1.5)  # now the job is older than its maximum age, and still "running"
        second = WorkerApp(stack.settings, consumer="second")
        await second.start()
        try:
            job = await _final(stack, job_id, timeout=30)
        finally:
            await second.stop(2.0)
            await mover.stop(2.0)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED  # a read is re-run; it never expires once started
    assert job.attempts == 2


async def test_a_token_left_draining_by_a_dead_mover_is_put_back_by_another(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    mover = Mover(settings, redis, "m")
    await redis.xadd(keys.token_stream("stranded"), {"job": "1"})
    # A mover took the token out of the active set and died before checking its queue.
    long_ago = int((time.time() - 60) * 1000)
    await redis.zadd(keys.DRAINING_TOKENS, {"stranded": long_ago, "empty": long_ago})
    await redis.hset(keys.TOKEN_CLIENTS, mapping={"stranded": "c1", "empty": "c2"})
    assert await mover.repair_draining() == 2
    assert await redis.smembers(keys.ACTIVE_TOKENS) == {"stranded"}
    assert await redis.zcard(keys.DRAINING_TOKENS) == 0
    assert await redis.hgetall(keys.TOKEN_CLIENTS) == {"stranded": "c1"}
    assert await mover.repair_draining() == 0


async def test_a_sweep_claims_a_dead_movers_entries_of_a_token_the_view_let_go(
    quiet_stack: Stack, redis: Any
) -> None:
    from mover import upkeep

    stack = quiet_stack
    for i in range(3):
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"v": str(i)})
        )
    token = next(iter(await redis.smembers(keys.ACTIVE_TOKENS)))
    stream = keys.token_stream(token)
    await redis.xgroup_create(stream, keys.MOVER_GROUP, id="0")
    await redis.xreadgroup(keys.MOVER_GROUP, "dead-mover", {stream: ">"}, count=10)
    await asyncio.sleep(0.05)
    held: dict[str, Any] = {}  # the view holds no token: it let this one go while its streams read empty
    assert not await upkeep.claim(redis, "live", held, 10_000, 10, [token])  # not idle long enough yet
    assert held == {}
    assert await upkeep.claim(redis, "live", held, 10, 10, [token])
    assert set(held) == {token} and held[token].held_total == 3 and not held[token].loaded
    pending = await redis.xpending(stream, keys.MOVER_GROUP)
    assert pending["consumers"] == [{"name": "live", "pending": 3}]
