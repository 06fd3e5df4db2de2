"""Small clients the end-to-end tests share."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import grpc

from cli import credentials
from devstack.stack import ProcessStack
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from tests.helpers import queues

FINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def grpc_stub(stack: ProcessStack) -> tuple[grpc.aio.Channel, jobs_pb2_grpc.JobServiceAsyncStub]:
    """A channel and JobService stub on the stack's gateway, presenting the stack's admin key."""
    assert stack.keys is not None
    channel = credentials.authenticated_channel(f"127.0.0.1:{stack.ports.gateway}", stack.keys.admin_key)
    return channel, jobs_pb2_grpc.JobServiceStub(channel)


def auth_headers(stack: ProcessStack) -> dict[str, str]:
    """HTTP headers presenting the stack's admin key to the REST edge."""
    assert stack.keys is not None
    return {"Authorization": f"Bearer {stack.keys.admin_key}"}


def edge_url(stack: ProcessStack, path: str) -> str:
    """URL of `path` on the stack's REST edge."""
    return f"http://127.0.0.1:{stack.ports.edge}{path}"


def sandbox_url(stack: ProcessStack, path: str) -> str:
    """URL of `path` on the stack's Flickr sandbox."""
    return f"http://127.0.0.1:{stack.ports.sandbox}{path}"


async def wait_final_grpc(
    stub: jobs_pb2_grpc.JobServiceAsyncStub, job_id: str, timeout: float = 30.0
) -> jobs_pb2.Job:
    """Poll GetJob until the job is final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        job: jobs_pb2.Job = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
        if jobs_pb2.JobState.Name(job.state) in FINAL:
            return job
        assert loop.time() < deadline, f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}"
        await asyncio.sleep(0.1)


async def wait_final_rest(
    session: aiohttp.ClientSession, stack: ProcessStack, job_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job is final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with session.get(edge_url(stack, f"/v1/jobs/{job_id}")) as resp:
            assert resp.status == 200, await resp.text()
            job: dict[str, Any] = await resp.json()
        if job.get("state") in FINAL:
            return job
        assert loop.time() < deadline, f"job {job_id} still {job.get('state')}"
        await asyncio.sleep(0.1)


async def add_fault(session: aiohttp.ClientSession, stack: ProcessStack, **fault: Any) -> None:
    """Plan a sandbox fault (kind, method, status, code, latency_ms, times)."""
    async with session.post(sandbox_url(stack, "/_sandbox/faults"), data=json.dumps(fault)) as resp:
        assert resp.status in (200, 201), await resp.text()


async def sandbox_calls(
    session: aiohttp.ClientSession, stack: ProcessStack, method: str
) -> list[dict[str, Any]]:
    """The sandbox's log of calls to `method`."""
    async with session.get(sandbox_url(stack, "/_sandbox/calls"), params={"method": method}) as resp:
        body = await resp.json()
    calls: list[dict[str, Any]] = body["calls"] if isinstance(body, dict) else body
    return calls


async def wait_all_final(
    stub: jobs_pb2_grpc.JobServiceAsyncStub, job_ids: list[str], timeout: float = 200.0
) -> list[jobs_pb2.Job]:
    """Wait for many jobs under one deadline; on timeout name every job still open and its state.

    A few pollers at a time (hundreds of concurrent polls would measure the poller). The deadline is
    kept below pytest's own timeout so a stuck job fails with a diagnosis, not a stack dump.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gate = asyncio.Semaphore(10)
    last: dict[str, jobs_pb2.Job] = {}

    async def one(job_id: str) -> jobs_pb2.Job | None:
        async with gate:
            while True:
                job: jobs_pb2.Job = await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
                last[job_id] = job
                if jobs_pb2.JobState.Name(job.state) in FINAL:
                    return job
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(0.1)

    done = await asyncio.gather(*(one(j) for j in job_ids))
    stuck = [
        f"{j}: {jobs_pb2.JobState.Name(last[j].state)} attempts={last[j].attempts} "
        f"updated={last[j].updated_at.ToJsonString()}"
        for j, d in zip(job_ids, done, strict=True)
        if d is None
    ]
    if stuck:
        raise JobsNotFinal(
            [j for j, d in zip(job_ids, done, strict=True) if d is None],
            f"{len(stuck)} of {len(job_ids)} jobs not final after {timeout:.0f}s:\n" + "\n".join(stuck[:20]),
        )
    return [d for d in done if d is not None]


async def wait_settled(stack: ProcessStack, timeout: float = 30.0) -> None:
    """Wait until nothing is queued that could run a job or send a webhook again (helpers.queues)."""
    from common import redisio

    redis = redisio.client(stack.settings.redis_url)
    try:
        await queues.wait_settled(redis, timeout)
    finally:
        await redis.aclose()


class JobsNotFinal(AssertionError):
    """Jobs that did not end in time, by id (for `diagnose`)."""

    def __init__(self, job_ids: list[str], message: str) -> None:
        super().__init__(message)
        self.job_ids = job_ids


async def diagnose(stack: ProcessStack, job_ids: list[str]) -> str:
    """Where stuck jobs are: their MongoDB record, their Redis entries and every log line naming them."""
    from common import keys, redisio
    from common.mongo import Mongo

    ids = job_ids[:5]
    out: list[str] = []
    mongo = Mongo.connect(stack.settings.mongo_url, stack.settings.mongo_db)
    redis = redisio.client(stack.settings.redis_url)
    try:
        fields = dict.fromkeys(("job_id", "status", "rev", "worker_id", "lease_until", "attempts"), 1)
        fields["_id"] = 0
        async for doc in mongo.jobs.find({"job_id": {"$in": ids}}, fields):
            out.append(f"mongo: {doc}")
        for target in keys.TARGETS:
            stream = keys.work_stream(target)
            raw: Any = await redis.xrange(stream)
            entries: dict[str, str] = {str(eid): str(f.get("job_id")) for eid, f in raw}
            pending: Any = await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10_000)
            for item in pending:
                if entries.get(str(item["message_id"])) in ids:
                    out.append(f"{stream} pending: {entries[str(item['message_id'])]} {item!r}")
            for eid, job_id in entries.items():
                if job_id in ids:
                    out.append(f"{stream} entry {eid}: {job_id}")
        async for name in redis.scan_iter(match=f"{keys.PREFIX}:q:*"):
            out.append(f"{name!r}: {await redis.xlen(name)} entries")
        delayed = [m for m in await redis.zrange(keys.DELAYED, 0, -1) if any(j in m for j in ids)]
        out.append(f"delayed: {delayed!r}")
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        out.append(f"diagnosis failed: {exc!r}")
    finally:
        await redis.aclose()
        await mongo.close()
    for proc in stack.procs.values():
        lines = [line for line in proc.tail(1_000_000).splitlines() if any(j in line for j in ids)]
        out += [f"{proc.name}: {line}" for line in lines[-10:]]
    return "\n".join(out)
