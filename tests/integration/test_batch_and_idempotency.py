"""SubmitJobs (all-or-nothing batches of up to 100) and idempotency keys under races, over gRPC and REST."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from common import keys
from common.admission import Admission
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import jobs_pb2
from mover.app import MoverApp
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import bad_fields, reason
from tests.helpers.uploads import upload_end
from worker.app import WorkerApp


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    """No mover and no worker: accepted jobs stay queued, so what was written can be counted."""
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as running:
        yield running


@pytest_asyncio.fixture
async def edge(stack: Stack) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    runner = web.AppRunner(edge_app.create_app(Settings.from_env({}), stack.channel))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(headers=stack.auth_headers) as http:
        yield f"http://127.0.0.1:{port}", http
    await runner.cleanup()


def echo(n: int, **fields: Any) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(
        user_id=DEMO_USER, method="flickr.test.echo", params={"n": str(n)}, **fields
    )


async def written(stack: Stack, redis: Any) -> tuple[int, int]:
    """Job documents in MongoDB and entries in every token queue."""
    streams = [k async for k in redis.scan_iter(match="fh:q:*")]
    return await stack.mongo.jobs.count_documents({}), sum([int(await redis.xlen(s)) for s in streams])


async def open_jobs(stack: Stack) -> int:
    return await Admission.from_settings(stack.gateway.redis, stack.settings).open_jobs()


async def test_a_batch_of_100_answers_100_ids_in_request_order(stack: Stack, redis: Any) -> None:
    answer = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[echo(i) for i in range(100)]))
    ids = [job.job_id for job in answer.jobs]
    assert len(ids) == len(set(ids)) == 100
    assert {job.state for job in answer.jobs} == {jobs_pb2.JOB_STATE_QUEUED}
    docs = {
        d["job_id"]: d async for d in stack.mongo.jobs.find({}, {"job_id": 1, "params": 1, "client_id": 1})
    }
    assert [docs[job_id]["params"]["n"] for job_id in ids] == [str(i) for i in range(100)]
    assert {d["client_id"] for d in docs.values()} == {stack.keys.admin_key_id}  # type: ignore[union-attr]
    assert await written(stack, redis) == (100, 100)
    assert await open_jobs(stack) == 100


async def test_one_bad_item_refuses_the_batch_naming_its_index_and_writes_nothing(
    stack: Stack, redis: Any
) -> None:
    items = [echo(i) for i in range(10)]
    items[3].method = "not-a-method"
    items[7].params["api_key"] = "mine"
    items[8].target = jobs_pb2.TARGET_UPLOAD
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"jobs[3].method", "jobs[7].params[api_key]", "jobs[8].target"}
    assert await written(stack, redis) == (0, 0)
    assert await open_jobs(stack) == 0


async def test_a_refused_callback_or_unknown_user_refuses_the_whole_batch(stack: Stack, redis: Any) -> None:
    items = [echo(i) for i in range(3)]
    items[2].callback_url = "http://10.0.0.9/hook"  # private: refused when checked
    items[2].callback_secret = "s" * 20
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"jobs[2].callback_url"}
    items = [
        echo(0, idempotency_key="k-0"),
        jobs_pb2.SubmitJobRequest(user_id="nobody", method="flickr.test.echo"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "jobs[1]" in (missing.value.details() or "")
    assert await written(stack, redis) == (0, 0)
    assert await open_jobs(stack) == 0
    # Nothing pinned the first item's key: it makes a job now.
    ok = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[echo(0, idempotency_key="k-0")]))
    assert await written(stack, redis) == (1, 1) and len(ok.jobs) == 1


@pytest.mark.parametrize("size", [0, 101])
async def test_an_empty_batch_or_one_over_100_is_refused(stack: Stack, redis: Any, size: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[echo(i) for i in range(size)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"jobs"}
    assert await written(stack, redis) == (0, 0)


async def test_idempotency_keys_in_a_batch_return_the_first_jobs(stack: Stack, redis: Any) -> None:
    first = await stack.jobs.SubmitJob(echo(0, idempotency_key="single"))
    items = [
        echo(0, idempotency_key="single"),
        echo(1, idempotency_key="b-1"),
        echo(2),
        echo(1, idempotency_key="b-1"),
    ]
    answer = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))
    ids = [job.job_id for job in answer.jobs]
    assert ids[0] == first.job_id  # an earlier SubmitJob's key
    assert ids[3] == ids[1]  # the same key twice in one batch: one job
    assert await written(stack, redis) == (3, 3)
    assert await open_jobs(stack) == 3  # duplicates do not count against the caps
    again = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items[:2]))
    assert [job.job_id for job in again.jobs] == ids[:2]
    # A key reused with another request refuses the whole batch and writes nothing.
    clash = [echo(5, idempotency_key="fresh"), echo(9, idempotency_key="b-1")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=clash))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert bad_fields(err.value) == {"jobs[1].idempotency_key"}
    assert await written(stack, redis) == (3, 3)
    fresh = await stack.jobs.SubmitJob(echo(5, idempotency_key="fresh"))  # its key was released
    assert fresh.job_id not in ids


async def test_concurrent_duplicates_race_to_one_job(stack: Stack, redis: Any) -> None:
    req = echo(7, idempotency_key="race")
    unkeyed = echo(7)
    singles = [stack.jobs.SubmitJob(req) for _ in range(12)]
    singles += [stack.jobs.SubmitJob(unkeyed, metadata=(("x-idempotency-key", "race"),)) for _ in range(12)]
    batches = [stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[req])) for _ in range(6)]
    one, many = await asyncio.gather(asyncio.gather(*singles), asyncio.gather(*batches))
    ids = {a.job_id for a in one} | {a.jobs[0].job_id for a in many}
    assert len(ids) == 1
    assert await written(stack, redis) == (1, 1)
    assert await open_jobs(stack) == 1  # the losers' admission ids were released


async def test_rest_batch_with_an_idempotency_header_and_409_on_another_payload(
    stack: Stack, redis: Any, edge: tuple[str, aiohttp.ClientSession]
) -> None:
    base, http = edge
    body = {
        "jobs": [
            {"user_id": DEMO_USER, "method": "flickr.test.echo", "params": {"n": str(i)}} for i in range(3)
        ]
    }
    headers = {"X-Idempotency-Key": "batch-1"}
    async with http.post(f"{base}/v1/jobs:batch", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        first = [job["job_id"] for job in (await resp.json())["jobs"]]
    async with http.post(f"{base}/v1/jobs:batch", json=body, headers=headers) as resp:
        assert resp.status == 200
        assert [job["job_id"] for job in (await resp.json())["jobs"]] == first
    body["jobs"][1]["params"] = {"n": "other"}
    async with http.post(f"{base}/v1/jobs:batch", json=body, headers=headers) as resp:
        assert resp.status == 409
        fields = [v["field"] for d in (await resp.json())["details"] for v in d.get("field_violations", [])]
        assert fields == ["jobs[1].idempotency_key"]
    body["jobs"][0]["method"] = "bad"
    async with http.post(f"{base}/v1/jobs:batch", json=body) as resp:
        assert resp.status == 400
        fields = [v["field"] for d in (await resp.json())["details"] for v in d.get("field_violations", [])]
        assert fields == ["jobs[0].method"]
    assert await written(stack, redis) == (3, 3)


async def test_rest_submit_dedupes_on_the_header_and_answers_409_to_another_payload(
    stack: Stack, edge: tuple[str, aiohttp.ClientSession]
) -> None:
    base, http = edge
    body = {"user_id": DEMO_USER, "method": "flickr.test.echo", "params": {"a": "1"}}
    headers = {"X-Idempotency-Key": "rest-1"}
    posts = [http.post(f"{base}/v1/jobs", json=body, headers=headers) for _ in range(8)]
    responses = await asyncio.gather(*posts)
    ids = set()
    for resp in responses:
        assert resp.status == 200
        ids.add((await resp.json())["job_id"])
        resp.release()
    assert len(ids) == 1
    async with http.post(f"{base}/v1/jobs", json={**body, "params": {"a": "2"}}, headers=headers) as resp:
        assert resp.status == 409
    assert await stack.mongo.jobs.count_documents({}) == 1


async def test_an_upload_dedupes_on_its_bytes_under_the_same_key(stack: Stack) -> None:
    photo = b"\xff\xd8\xff\xe0" + hashlib.sha256(b"one").digest() * 100

    def messages(data: bytes) -> list[jobs_pb2.UploadJobRequest]:
        job = jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER, target=jobs_pb2.TARGET_UPLOAD, params={"title": "t"}, idempotency_key="up-1"
        )
        return [jobs_pb2.UploadJobRequest(job=job), jobs_pb2.UploadJobRequest(chunk=data), upload_end(data)]

    first = await stack.jobs.UploadJob(iter(messages(photo)))
    second = await stack.jobs.UploadJob(iter(messages(photo)))
    assert second.job_id == first.job_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.UploadJob(iter(messages(photo + b"other")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED"
    assert await stack.mongo.jobs.count_documents({}) == 1
    assert await stack.mongo.db["uploads.files"].count_documents({}) == 1  # the duplicates' bytes are gone
    assert await open_jobs(stack) == 1


async def test_a_batch_whose_one_job_cannot_be_queued_takes_back_the_others_and_leaves_nothing(
    stack: Stack, redis: Any
) -> None:
    record = await stack.mongo.tokens.find_one({"user_id": DEMO_USER})
    assert record is not None
    token = record["token_id_hash"]
    await redis.set(keys.token_stream(token, "high"), "not a stream")  # the high job's append fails
    items = [
        echo(0, idempotency_key="tb-0"),
        echo(1, idempotency_key="tb-1", priority=jobs_pb2.PRIORITY_HIGH),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await redis.xlen(keys.token_stream(token)) == 1  # the normal job did go in...
    assert await stack.mongo.jobs.count_documents({}) == 0  # ...and was taken back with the other
    assert [k async for k in redis.scan_iter(match=keys.job_state("*"))] == []  # hot copies too
    assert await open_jobs(stack) == 0
    await redis.delete(keys.token_stream(token, "high"))
    again = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items))  # the keys were released
    assert await stack.mongo.jobs.count_documents({"job_id": {"$in": [j.job_id for j in again.jobs]}}) == 2


async def test_submissions_cancelled_before_their_commit_leave_no_job_no_key_and_no_count(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    # A long insert window: the calls give up (their deadline passes) while their jobs wait for it.
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, insert_batch_ms=400.0)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        await stack.jobs.SubmitJob(echo(9))  # the key's check and the token are cached from here on
        single = echo(0, idempotency_key="gave-up")
        several = jobs_pb2.SubmitJobsRequest(jobs=[echo(1, idempotency_key="gave-up-1"), echo(2)])
        for call in (
            stack.jobs.SubmitJob(single, timeout=0.15),
            stack.jobs.SubmitJobs(several, timeout=0.15),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.6)  # the window has passed: had the jobs been written, they would be now
        assert await written(stack, redis) == (1, 1)  # the first job only
        assert await open_jobs(stack) == 1
        first = await stack.jobs.SubmitJob(single)  # the key points at nothing: a job now
        assert await stack.mongo.jobs.count_documents({"job_id": first.job_id}) == 1
        assert await written(stack, redis) == (2, 2)


async def test_batched_jobs_run_to_completion(stack: Stack) -> None:
    answer = await stack.jobs.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[echo(i) for i in range(5)]))
    mover, worker = MoverApp(stack.settings, consumer="m"), WorkerApp(stack.settings, consumer="w")
    await mover.start()
    await worker.start()
    try:
        for job in answer.jobs:
            for _ in range(300):
                got = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id))
                if got.state == jobs_pb2.JOB_STATE_COMPLETED:
                    break
                await asyncio.sleep(0.05)
            assert got.state == jobs_pb2.JOB_STATE_COMPLETED, got
    finally:
        await worker.stop(2.0)
        await mover.stop(2.0)
