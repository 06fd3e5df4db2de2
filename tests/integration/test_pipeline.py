"""A job travels gateway → token stream → mover → work stream → worker → Flickr sandbox → MongoDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import bad_fields, reason, result_of, status_of

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings) as running:
        yield running


async def wait_final(stack: Stack, job_id: str, timeout: float = 15.0) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in FINAL:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}")
        await asyncio.sleep(0.05)


async def test_echo_job_completes_with_flickrs_answer(stack: Stack) -> None:
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"foo": "bar"})
    )
    assert resp.state == jobs_pb2.JOB_STATE_QUEUED
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert result_of(job)["stat"] == "ok"
    assert result_of(job)["foo"]["_content"] == "bar"
    assert job.attempts == 1
    assert not job.from_cache


async def test_unknown_user_is_not_found_and_nothing_is_written(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id="nobody", method="flickr.test.echo"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "TOKEN_NOT_FOUND"
    assert await stack.mongo.jobs.count_documents({}) == 0


async def test_invalid_request_lists_every_bad_field(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id="", method="photos.search", params={"oauth_token": "x"})
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"user_id", "method", "params[oauth_token]"}
    assert await stack.mongo.jobs.count_documents({}) == 0


async def test_second_read_is_served_from_cache(stack: Stack) -> None:
    first = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER, method="flickr.photos.getInfo", params={"photo_id": "12345"}
        )
    )
    done = await wait_final(stack, first.job_id)
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED, done.error
    second = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER, method="flickr.photos.getInfo", params={"photo_id": "12345"}
        )
    )
    cached = await wait_final(stack, second.job_id)
    assert cached.from_cache
    assert cached.result == done.result
    assert len([c for c in stack.sandbox.calls if c.method == "flickr.photos.getInfo"]) == 1


async def test_transient_failures_exhaust_attempts_into_the_dead_letter_stream(
    stack: Stack, redis: Any
) -> None:
    stack.sandbox.faults.clear()
    from sandbox.state import Fault

    stack.sandbox.faults.append(
        Fault(id="f1", method="flickr.test.echo", kind="http_status", status=503, times=-1)
    )
    resp = await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
    job = await wait_final(stack, resp.job_id)
    stack.sandbox.faults.clear()
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == "ATTEMPTS_EXHAUSTED"
    assert job.attempts == stack.settings.worker_max_attempts
    dead = await redis.xrange("fh:dlq")
    assert [fields["job_id"] for _, fields in dead] == [resp.job_id]
    assert dead[0][1]["dlq_reason"] == "attempts_exhausted"


async def test_cancel_a_queued_job_and_refuse_to_cancel_a_finished_one(stack: Stack) -> None:
    for mover in stack.movers:
        await mover.stop(2.0)  # nothing moves: the job stays queued
    resp = await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
    cancelled = await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=resp.job_id))
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=resp.job_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id="0" * 32))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancelled_job_is_never_executed(stack: Stack) -> None:
    for mover in stack.movers:
        await mover.stop(2.0)
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"cancel": "me"})
    )
    await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=resp.job_id))
    from mover.app import MoverApp

    mover = MoverApp(stack.settings, consumer="late-mover")
    await mover.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await mover.stop(2.0)
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=resp.job_id))
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert not [c for c in stack.sandbox.calls if c.params.get("cancel") == "me"]


async def test_idempotency_key_returns_the_first_job_and_refuses_a_different_payload(stack: Stack) -> None:
    req = jobs_pb2.SubmitJobRequest(
        user_id=DEMO_USER, method="flickr.test.echo", params={"a": "1"}, idempotency_key="k-1"
    )
    first, second = await asyncio.gather(stack.jobs.SubmitJob(req), stack.jobs.SubmitJob(req))
    assert first.job_id == second.job_id
    third = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"a": "1"}),
        metadata=(("x-idempotency-key", "k-1"),),
    )
    assert third.job_id == first.job_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER, method="flickr.test.echo", params={"a": "2"}, idempotency_key="k-1"
            )
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await stack.mongo.jobs.count_documents({}) == 1


async def test_list_jobs_pages_newest_first_with_filters(stack: Stack) -> None:
    ids = []
    for i in range(5):
        resp = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"i": str(i)})
        )
        ids.append(resp.job_id)
        await asyncio.sleep(0.005)
    await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.login"))
    seen: list[str] = []
    token = ""
    while True:
        page = await stack.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(
                user_id=DEMO_USER, method="flickr.test.echo", page_size=2, page_token=token
            )
        )
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    everything = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_size=100))
    assert len(everything.jobs) == 6
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_token="garbage!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(user_id="", page_size=500))
    assert bad_fields(err.value) == {"user_id", "page_size"}


async def test_watch_ends_at_the_final_state(stack: Stack) -> None:
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.login")
    )
    states = [
        j.state async for j in stack.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=resp.job_id), timeout=20)
    ]
    assert states[-1] == jobs_pb2.JOB_STATE_COMPLETED
    assert states.count(jobs_pb2.JOB_STATE_COMPLETED) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stack.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id="f" * 32)):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_queue_stats_report_the_queues(stack: Stack) -> None:
    from flickrhub.v1 import admin_pb2, admin_pb2_grpc

    for mover in stack.movers:
        await mover.stop(2.0)
    for _ in range(3):
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
    admin = admin_pb2_grpc.AdminServiceStub(stack.channel)
    stats = await admin.GetQueueStats(admin_pb2.GetQueueStatsRequest())
    assert stats.active_tokens == 1
    assert [q.depth for q in stats.token_queues] == [3]
    assert {w.target for w in stats.work_streams} == {"rest", "upload", "replace"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetQueueStats(admin_pb2.GetQueueStatsRequest(top_tokens=1000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_upload_targets_are_refused_with_a_pointer_to_upload_job(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER, method="flickr.photos.upload", target=jobs_pb2.TARGET_UPLOAD
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "use UploadJob (or POST /v1/uploads) for uploads"
    assert bad_fields(err.value) == {"target"}
    assert await stack.mongo.jobs.count_documents({}) == 0


async def test_secrets_never_reach_mongo_in_clear(stack: Stack) -> None:
    from sandbox.state import DEMO_TOKEN, DEMO_TOKEN_SECRET

    secret = "webhook-secret-0123456789"
    await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER,
            method="flickr.test.echo",
            callback_url="http://127.0.0.1:9/hook",
            callback_secret=secret,
        )
    )
    dump = ""
    for name in await stack.mongo.db.list_collection_names():
        dump += repr([doc async for doc in stack.mongo.db[name].find({})])
    for clear in (secret, DEMO_TOKEN, DEMO_TOKEN_SECRET):
        assert clear not in dump


async def test_unreachable_stores_answer_unavailable_with_retry_info(
    redis_url: str, cache_redis_url: str, redis: Any
) -> None:
    from cli import credentials
    from devstack.procs import free_port
    from gateway.app import GatewayApp

    dead_mongo = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true&serverSelectionTimeoutMS=300"
    settings = stack_settings(redis_url, cache_redis_url, dead_mongo, "nowhere")
    app = GatewayApp(settings)
    await app.grpc.start()  # serve without the start-up index check, which needs MongoDB
    try:
        # A well-formed key: checking it needs MongoDB too, so the answer is still UNAVAILABLE.
        any_key = credentials.authenticated_channel(f"127.0.0.1:{app.port}", "fhk_somekey_" + "s" * 43)
        async with any_key as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetJob(jobs_pb2.GetJobRequest(job_id="0" * 32))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status_of(err.value).details)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitJob(jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.grpc.stop(0.5)
        await app.redis.aclose()
        await app.mongo.close()


async def test_a_failed_submission_releases_its_idempotency_key(stack: Stack, redis: Any) -> None:
    from common import keys

    record = await stack.mongo.tokens.find_one({"user_id": DEMO_USER})
    assert record is not None
    token = record["token_id_hash"]
    await redis.set(keys.token_stream(token), "not a stream")  # the append fails with WRONGTYPE
    req = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", idempotency_key="retry-me")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(req)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await stack.mongo.jobs.count_documents({}) == 0  # the refusal changed nothing
    await redis.delete(keys.token_stream(token))
    retried = await stack.jobs.SubmitJob(req)  # the key was released: a real job this time
    assert (await wait_final(stack, retried.job_id)).state == jobs_pb2.JOB_STATE_COMPLETED


async def test_health_check_and_watch_report_serving(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(stack.channel)
    check = await health.Check(health_pb2.HealthCheckRequest(service="flickrhub.v1.JobService"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()
    watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
