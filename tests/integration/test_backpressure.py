"""Backpressure: a client's pending-jobs cap and FlickrHub's buffer cap refuse fast, write nothing, recover.

The stack runs with a cap of 4 open jobs per client and 6 in all; unless a test
starts them, no mover and no worker run, so accepted jobs stay open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from cli import credentials
from common import admission as admission_module
from common import keys
from common.admission import Admission, BufferFull, ClientOverloaded
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from mover.app import MoverApp
from tests.e2e.webhook_receiver import Receiver
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import reason, status_of
from tests.helpers.uploads import upload_messages
from worker import webhook_signature as webhook
from worker.app import WorkerApp

CAP = 4
TOTAL = 6
RETRY_AFTER_S = 3.0
SECRET = "expiry-webhook-secret-0123"
FINAL = {
    jobs_pb2.JOB_STATE_COMPLETED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_CANCELLED,
    jobs_pb2.JOB_STATE_EXPIRED,
}


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        client_max_pending_jobs=CAP,
        max_buffered_jobs=TOTAL,
        backpressure_retry_after_s=RETRY_AFTER_S,
    )
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as running:
        yield running


@pytest_asyncio.fixture
async def client_jobs(stack: Stack) -> AsyncIterator[jobs_pb2_grpc.JobServiceAsyncStub]:
    """JobService as the demo client key: another client than the stack's admin key."""
    assert stack.keys is not None
    channel = credentials.authenticated_channel(f"127.0.0.1:{stack.gateway.port}", stack.keys.client_key)
    async with channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


def admission_of(stack: Stack) -> Admission:
    """The counts the gateway keeps, read through the same class."""
    return Admission.from_settings(stack.gateway.redis, stack.settings)


def echo(n: int = 0) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"n": str(n)})


async def written(stack: Stack, redis: Any) -> tuple[int, int]:
    """Job documents in MongoDB and entries in every token queue."""
    streams = [k async for k in redis.scan_iter(match="fh:q:*")]
    queued = sum([int(await redis.xlen(s)) for s in streams])
    return await stack.mongo.jobs.count_documents({}), queued


def refusals(reason_label: str) -> float:
    return REGISTRY.get_sample_value("flickrhub_gateway_backpressure_total", {"reason": reason_label}) or 0.0


def retry_delay_s(err: grpc.aio.AioRpcError) -> float:
    for detail in status_of(err).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    raise AssertionError("no RetryInfo")


async def fill(stub: jobs_pb2_grpc.JobServiceAsyncStub, n: int) -> list[str]:
    return [(await stub.SubmitJob(echo(i))).job_id for i in range(n)]


async def test_a_client_at_its_cap_is_refused_with_retry_info_and_nothing_is_written(
    stack: Stack, redis: Any
) -> None:
    await fill(stack.jobs, CAP)
    before, counted = await written(stack, redis), refusals("client_pending")
    assert before == (CAP, CAP)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(echo(99))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err.value) == "CLIENT_PENDING_JOBS_EXCEEDED"
    assert retry_delay_s(err.value) == RETRY_AFTER_S
    quota = [d for d in status_of(err.value).details if d.type_url.endswith("QuotaFailure")]
    assert len(quota) == 1
    # The same refusal for a batch, however small, and for an upload (before any byte is stored).
    with pytest.raises(grpc.aio.AioRpcError) as batch_err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[echo(100)]))
    assert batch_err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    upload = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, target=jobs_pb2.TARGET_UPLOAD)
    with pytest.raises(grpc.aio.AioRpcError) as upload_err:
        await stack.jobs.UploadJob(upload_messages(upload, b"\xff\xd8" * 500))
    assert upload_err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await written(stack, redis) == before
    assert await stack.mongo.db["uploads.files"].count_documents({}) == 0
    assert refusals("client_pending") == counted + 3
    assert await admission_of(stack).open_jobs(stack.keys.admin_key_id) == CAP  # type: ignore[union-attr]


async def test_another_client_is_not_held_back_by_a_full_one(
    stack: Stack, client_jobs: jobs_pb2_grpc.JobServiceAsyncStub
) -> None:
    await fill(stack.jobs, CAP)
    accepted = await client_jobs.SubmitJob(echo(1))
    assert accepted.state == jobs_pb2.JOB_STATE_QUEUED


async def test_a_full_buffer_answers_unavailable_with_retry_info_and_writes_nothing(
    stack: Stack, redis: Any, client_jobs: jobs_pb2_grpc.JobServiceAsyncStub
) -> None:
    await fill(stack.jobs, CAP)
    await fill(client_jobs, TOTAL - CAP)  # the client is under its own cap; FlickrHub is full
    before, counted = await written(stack, redis), refusals("buffer_full")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client_jobs.SubmitJob(echo(99))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(err.value) == "QUEUE_FULL"
    assert retry_delay_s(err.value) == RETRY_AFTER_S
    assert await written(stack, redis) == before == (TOTAL, TOTAL)
    assert refusals("buffer_full") == counted + 1


async def test_rest_answers_429_and_503_with_retry_after(stack: Stack) -> None:
    assert stack.keys is not None
    app = edge_app.create_app(Settings.from_env({}), stack.channel)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    body = {"user_id": DEMO_USER, "method": "flickr.test.echo"}
    admin = {"Authorization": f"Bearer {stack.keys.admin_key}"}
    client = {"Authorization": f"Bearer {stack.keys.client_key}"}
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v1/jobs"
            for _ in range(CAP):
                async with http.post(url, json=body, headers=admin) as resp:
                    assert resp.status == 200, await resp.text()
            async with http.post(url, json=body, headers=admin) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "3"
                assert (await resp.json())["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            # The original API's route goes through the same submission path.
            legacy = f"http://127.0.0.1:{port}/api/v1/flickr/rest"
            async with http.post(legacy, json=body, headers=admin) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "3"
            for _ in range(TOTAL - CAP):
                async with http.post(url, json=body, headers=client) as resp:
                    assert resp.status == 200, await resp.text()
            async with http.post(f"{url}:batch", json={"jobs": [body]}, headers=client) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "3"
                assert (await resp.json())["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    finally:
        await runner.cleanup()


async def wait_final(stack: Stack, job_ids: list[str], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    for job_id in job_ids:
        while (await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).state not in FINAL:
            assert asyncio.get_running_loop().time() < deadline, f"job {job_id} never finished"
            await asyncio.sleep(0.05)


async def test_a_client_at_its_cap_submits_again_once_its_jobs_finish(stack: Stack) -> None:
    admission = admission_of(stack)
    admin_id = stack.keys.admin_key_id  # type: ignore[union-attr]
    job_ids = await fill(stack.jobs, CAP)
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.jobs.SubmitJob(echo(99))
    # A cancelled job is final: its place frees at once.
    await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_ids[0]))
    assert await admission.open_jobs(admin_id) == CAP - 1
    job_ids.append((await stack.jobs.SubmitJob(echo(4))).job_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.jobs.SubmitJob(echo(99))
    mover, worker = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        await wait_final(stack, job_ids)
        for _ in range(100):  # the worker releases right after recording the outcome
            if await admission.open_jobs(admin_id) == 0:
                break
            await asyncio.sleep(0.05)
        assert await admission.open_jobs(admin_id) == 0
        assert await admission.open_jobs() == 0
        again = await fill(stack.jobs, CAP)  # a full cap's worth again
        await wait_final(stack, again)
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)


async def test_a_job_made_final_without_its_release_is_released_when_its_entry_comes_back(
    stack: Stack,
) -> None:
    """A worker killed between recording an outcome and releasing: the redelivered entry repairs the count."""
    admission = admission_of(stack)
    admin_id = stack.keys.admin_key_id  # type: ignore[union-attr]
    job_ids = await fill(stack.jobs, 2)
    assert await stack.store.cancel(job_ids[0])  # final in MongoDB only, as if the process died next
    assert await admission.open_jobs(admin_id) == 2
    mover, worker = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        await wait_final(stack, job_ids)
        for _ in range(100):
            if await admission.open_jobs(admin_id) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)
    assert await admission.open_jobs(admin_id) == 0


async def test_an_expired_job_is_acknowledged_reported_counted_and_frees_its_place(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    settings = stack_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, job_max_age_s=0.3, client_max_pending_jobs=1
    )
    await seed_demo_token(settings)
    receiver = await Receiver().start()
    expired_before = REGISTRY.get_sample_value("flickrhub_worker_jobs_total", {"outcome": "expired"}) or 0.0
    try:
        async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
            late = jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER,
                method="flickr.test.echo",
                params={"late": "1"},
                callback_url=receiver.url,
                callback_secret=SECRET,
            )
            job_id = (await stack.jobs.SubmitJob(late)).job_id
            with pytest.raises(grpc.aio.AioRpcError):  # its place is taken while it waits
                await stack.jobs.SubmitJob(echo(1))
            await asyncio.sleep(0.5)  # nobody moved it in time
            mover, worker = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="w")
            await mover.start()
            await worker.start()
            try:
                [delivery] = await receiver.wait_for(job_id)
                await wait_final(stack, [job_id])
                for _ in range(100):
                    if await admission_of(stack).open_jobs() == 0:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await worker.stop(2.0)
                await mover.stop(2.0)
            job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
            assert job.state == jobs_pb2.JOB_STATE_EXPIRED and job.attempts == 0
            assert not [c for c in stack.sandbox.calls if c.params.get("late") == "1"]
            assert await admission_of(stack).open_jobs() == 0
            # Acknowledged and removed: nothing of it is left pending in any work stream.
            for target in keys.TARGETS:
                stream = keys.work_stream(target)
                if await redis.exists(stream):
                    assert await redis.xlen(stream) == 0
                    assert (await redis.xpending(stream, keys.WORKER_GROUP))["pending"] == 0
    finally:
        await receiver.stop()
    assert webhook.verify(delivery.body, SECRET, delivery.headers[webhook.SIGNATURE_HEADER])
    assert delivery.payload["state"] == "expired"
    expired_after = REGISTRY.get_sample_value("flickrhub_worker_jobs_total", {"outcome": "expired"}) or 0.0
    assert expired_after == expired_before + 1


async def test_ids_counted_longer_than_the_horizon_age_out_and_releases_repeat_harmlessly(redis: Any) -> None:
    admission = Admission(redis, client_cap=2, total_cap=10, horizon_s=0.3, retry_after_s=1.0)
    await admission.admit("c1", ["a", "b"])  # say the gateway died before writing these jobs
    with pytest.raises(ClientOverloaded):
        await admission.admit("c1", ["c"])
    await admission.release("c1", ["zzz"])  # an id that is not counted changes nothing
    assert await admission.open_jobs("c1") == 2
    await asyncio.sleep(0.4)
    await admission.admit("c1", ["c"])  # the leaked ids aged out
    assert await admission.open_jobs("c1") == 1
    await admission.release("c1", ["c"])
    await admission.release("c1", ["c"])  # a repeated release (a redelivered entry) is a no-op
    assert await admission.open_jobs("c1") == 0
    assert await admission.open_jobs() == 0
    assert await redis.exists(keys.client_open_jobs("c1")) == 0


async def test_a_batch_is_admitted_whole_or_not_at_all(redis: Any) -> None:
    admission = Admission(redis, client_cap=3, total_cap=4, horizon_s=60, retry_after_s=1.0)
    with pytest.raises(ClientOverloaded):
        await admission.admit("c1", ["a", "b", "c", "d"])
    assert await admission.open_jobs() == 0
    await admission.admit("c1", ["a", "b", "c"])
    await admission.admit("c2", ["e"])
    with pytest.raises(BufferFull):
        await admission.admit("c2", ["f"])
    assert await admission.open_jobs("c2") == 1


async def _zcards(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_zcard", {}).get("calls", 0))


async def test_turns_far_from_every_cap_skip_the_count_and_one_replica_stays_exact(redis: Any) -> None:
    admission = Admission(redis, client_cap=20, total_cap=100, horizon_s=60, retry_after_s=1.0)
    before = await _zcards(redis)
    await admission.admit("c1", ["a"])  # nothing known yet: counted (the client's set and the global one)
    assert await _zcards(redis) - before == 2
    for i in range(8):  # 1 + 8 + 1 stays within half of 20: added, not counted
        await admission.admit("c1", [f"x{i}"])
    assert await _zcards(redis) - before == 2
    await admission.admit("c1", ["y"])  # 9 + 1 = 10: still half the cap
    assert await _zcards(redis) - before == 2
    await admission.admit("c1", ["z"])  # 11 would pass half the cap: counted again
    assert await _zcards(redis) - before == 4
    for i in range(9):  # counted from here on: exact at the cap
        await admission.admit("c1", [f"w{i}"])
    with pytest.raises(ClientOverloaded):
        await admission.admit("c1", ["over"])
    assert await admission.open_jobs("c1") == 20


async def test_a_count_older_than_far_s_is_read_again(redis: Any) -> None:
    admission = Admission(redis, client_cap=20, total_cap=100, horizon_s=60, retry_after_s=1.0)
    other = Admission(redis, client_cap=20, total_cap=100, horizon_s=60, retry_after_s=1.0)  # another replica
    await admission.admit("c1", ["a"])
    await other.admit("c1", [f"o{i}" for i in range(9)])  # unseen by the first replica
    before = await _zcards(redis)
    await asyncio.sleep(admission_module.FAR_S + 0.05)
    await admission.admit("c1", ["b"])  # its count is too old to trust: read again, and it sees 11
    assert await _zcards(redis) - before == 2
    await admission.admit("c1", ["c"])  # 11 + 1 is past half the cap: counted
    assert await _zcards(redis) - before == 4
    assert await admission.open_jobs("c1") == 12


async def test_uncounted_turns_in_flight_at_once_see_each_other(redis: Any) -> None:
    admission = Admission(redis, client_cap=20, total_cap=100, horizon_s=60, retry_after_s=1.0)
    await admission.admit("c1", ["first"])  # counted: 1 open
    before = await _zcards(redis)
    pending = []
    for i in range(12):  # one turn each, started while the earlier ones are still in flight
        pending.append(asyncio.ensure_future(admission.admit("c1", [f"p{i}"])))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*pending)
    # Had each turn judged from the estimate before the others, all 12 would have gone uncounted.
    assert await _zcards(redis) - before >= 2
    assert await admission.open_jobs("c1") == 13


async def _calls(redis: Any, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_deferred_admission_is_added_by_its_commits_pipeline_ahead_of_the_entry(redis: Any) -> None:
    admission = Admission(redis, client_cap=20, total_cap=100, horizon_s=60, retry_after_s=1.0)
    await admission.admit("c1", ["first"], deferrable=True)  # nothing known yet: counted at once
    assert await admission.open_jobs("c1") == 1
    before = [await _calls(redis, c) for c in ("eval", "zadd", "zrem")]
    for i in range(3):
        await admission.admit("c1", [f"d{i}"], deferrable=True)  # far from every cap: nothing sent
    assert await admission.open_jobs("c1") == 1
    await admission.release("c1", ["d2"])  # refused or a duplicate before its batch: just forgotten
    assert [await _calls(redis, c) for c in ("eval", "zadd", "zrem")] == before
    pipe = redis.pipeline(transaction=False)
    admission.unsent_on(pipe, ["d0", "d1", "d2", "not-deferred"])
    pipe.xadd("entries", {"job": "d0"})  # the batch's entries follow the adds
    replies = await pipe.execute()
    assert len(replies) == 3  # a ZADD for the client's set, one for the global set, the entry
    assert set(await redis.zrange(keys.client_open_jobs("c1"), 0, -1)) == {"first", "d0", "d1"}
    assert await admission.open_jobs() == 3
    pipe = redis.pipeline(transaction=False)
    admission.unsent_on(pipe, ["d0", "d1"])  # sent once only
    assert len(pipe.command_stack) == 0
    await admission.release("c1", ["first", "d0", "d1"])
    assert await admission.open_jobs() == 0


async def test_deferred_admissions_stop_near_the_cap_and_count_there(redis: Any) -> None:
    admission = Admission(redis, client_cap=10, total_cap=100, horizon_s=60, retry_after_s=1.0)
    other = Admission(redis, client_cap=10, total_cap=100, horizon_s=60, retry_after_s=1.0)
    await admission.admit("c1", ["a0"], deferrable=True)  # counted: 1
    for i in range(1, 5):
        await admission.admit("c1", [f"a{i}"], deferrable=True)  # 5 by the estimate: still under half
    assert await admission.open_jobs("c1") == 1
    await other.admit("c1", [f"o{i}" for i in range(4)])  # another replica, unseen by the first
    pipe = redis.pipeline(transaction=False)
    admission.unsent_on(pipe, [f"a{i}" for i in range(1, 5)])
    await pipe.execute()
    await admission.admit("c1", ["a5"], deferrable=True)  # 6 > half the cap: counted, sees 9 + 1
    assert await admission.open_jobs("c1") == 10
    with pytest.raises(ClientOverloaded):
        await admission.admit("c1", ["a6"], deferrable=True)
    assert await admission.open_jobs("c1") == 10
