"""Cancelling: a retrying job is cancelled and never runs again; a running one answers FAILED_PRECONDITION."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from common.admission import Admission
from flickrhub.v1 import jobs_pb2
from sandbox.state import Fault
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.queues import wait_settled
from tests.helpers.rich import reason


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    # Retries wait 2 s: long enough to cancel a job while it is RETRYING.
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        worker_backoff_base_s=2.0,
        worker_backoff_max_s=2.0,
    )
    await seed_demo_token(settings)
    async with running_stack(settings, cache=False) as running:
        yield running


async def wait_state(stack: Stack, job_id: str, state: int, timeout: float = 15.0) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state == state:
            return job
        assert asyncio.get_running_loop().time() < deadline, jobs_pb2.JobState.Name(job.state)
        await asyncio.sleep(0.02)


def admission_of(stack: Stack) -> Admission:
    return Admission.from_settings(stack.gateway.redis, stack.settings)


async def test_a_running_job_cannot_be_cancelled_and_finishes(stack: Stack) -> None:
    stack.sandbox.faults.append(
        Fault(id="slow", method="flickr.test.echo", kind="latency", latency_ms=1500, times=1)
    )
    req = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"c": "running"})
    job_id = (await stack.jobs.SubmitJob(req)).job_id
    await wait_state(stack, job_id, jobs_pb2.JOB_STATE_RUNNING)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "JOB_NOT_CANCELLABLE"
    assert await admission_of(stack).open_jobs() == 1  # the refusal released nothing
    await wait_state(stack, job_id, jobs_pb2.JOB_STATE_COMPLETED)


async def test_a_retrying_job_is_cancelled_and_never_runs_again(stack: Stack) -> None:
    stack.sandbox.faults.append(
        Fault(id="down", method="flickr.test.echo", kind="http_status", status=503, times=1)
    )
    req = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"c": "retrying"})
    job_id = (await stack.jobs.SubmitJob(req)).job_id
    await wait_state(stack, job_id, jobs_pb2.JOB_STATE_RETRYING)
    cancelled = await stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert await admission_of(stack).open_jobs() == 0  # final at once: its place is free
    # The retry comes due (2 s), its entry meets a cancelled job and is dropped: nothing is queued.
    await wait_settled(stack.gateway.redis)
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED and job.attempts == 1
    assert len([c for c in stack.sandbox.calls if c.params.get("c") == "retrying"]) == 1
