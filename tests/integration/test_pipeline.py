"""A job travels gateway → token stream → mover → work stream → worker → Flickr sandbox → MongoDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from flickrhub.v1 import jobs_pb2
from tests.helpers.rich import bad_fields, reason
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


@pytest_asyncio.fixture
async def stack(redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any) -> AsyncIterator[Stack]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings, cache=False) as running:
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
    assert job.result["stat"] == "ok"
    assert job.result["foo"]["_content"] == "bar"
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
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.photos.getInfo", params={"photo_id": "12345"})
    )
    done = await wait_final(stack, first.job_id)
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED, done.error
    second = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.photos.getInfo", params={"photo_id": "12345"})
    )
    cached = await wait_final(stack, second.job_id)
    assert cached.from_cache
    assert cached.result == done.result
    assert len([c for c in stack.sandbox.calls if c.method == "flickr.photos.getInfo"]) == 1
