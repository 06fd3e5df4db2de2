"""A worker killed at every step of a Flickr write: the write reaches Flickr at most once.

The first worker has one failpoint armed (common.failpoints) and dies there with exit code 137,
as a SIGKILL would leave it; a second, unarmed worker starts once it is dead and finishes the job.
The cases share one stack with no worker of its own: each starts its own two workers, resets the
sandbox (photo, calls, faults) and ends once nothing is queued and its workers are stopped.
A takeover of setMeta reads the photo first (worker.reconcile): a title already set completes the
job unsent, a title certainly absent is sent now; a write no read can prove ends unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from common import failpoints, jobs, keys, redisio
from common.settings import SANDBOX_DEMO_CONSUMER_KEY
from devstack.procs import Managed, stop_all
from devstack.seed import DEMO_USER
from devstack.stack import ProcessStack
from flickrhub.v1 import jobs_pb2
from tests.e2e.conftest import process_stack
from tests.e2e.helpers import (
    add_fault,
    auth_headers,
    grpc_stub,
    sandbox_calls,
    sandbox_url,
    wait_final_grpc,
    wait_settled,
)
from tests.e2e.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

SET_META = "flickr.photos.setMeta"
# A write method no Flickr read can prove (not in worker.reconcile): its takeover never sends it.
UNPROVABLE = "flickr.photos.addTags"
PHOTO_ID = "123"
DEFAULT_TITLE = f"Sandbox photo {PHOTO_ID}"  # what the sandbox's getInfo says before any setMeta


@dataclass(frozen=True)
class CrashPoint:
    """Where the first worker dies, and what the job must look like afterwards."""

    armed: str  # the first worker's FAILPOINTS
    latency_ms: int  # a slow Flickr keeps the call in flight while the worker dies
    state: int
    error_code: str
    calls: int  # writes the sandbox saw
    attempts: int
    method: str = SET_META
    reconciled: bool = False  # completed from a Flickr read, without sending the write again


UNKNOWN = jobs_pb2.JOB_STATE_FAILED, "WRITE_OUTCOME_UNKNOWN"
DONE = jobs_pb2.JOB_STATE_COMPLETED, ""

CASES = {
    # The claim recorded the attempt, nothing was sent: the takeover reads the photo, finds the
    # title absent and sends the write, once.
    "claimed": CrashPoint(f"{failpoints.WORKER_CLAIMED}=exit", 0, *DONE, calls=1, attempts=2),
    # Dies 1 s into a 2 s call: Flickr still carries the write out (the sandbox sleeps, then applies
    # it, though the client is gone) about 2 s after the claim; the takeover comes at 3.8 s at the
    # earliest (the entry's 3 s idle time counts from the last heartbeat, at 0.8 s), reads the title
    # and completes the job unsent.
    "in_flight": CrashPoint(
        f"{failpoints.WORKER_CLAIMED}=exit-after:1000", 2000, *DONE, calls=1, attempts=2, reconciled=True
    ),
    # Flickr applied it; the answer died with the worker: the takeover's read shows the title.
    "answered": CrashPoint(
        f"{failpoints.WORKER_ANSWERED}=exit", 0, *DONE, calls=1, attempts=2, reconciled=True
    ),
    # Recorded: the redelivered entry meets a final job, queues the missing webhook, changes nothing.
    "recorded": CrashPoint(f"{failpoints.WORKER_RECORDED}=exit", 0, *DONE, calls=1, attempts=1),
    "announced": CrashPoint(f"{failpoints.WORKER_ANNOUNCED}=exit", 0, *DONE, calls=1, attempts=1),
    "acked": CrashPoint(f"{failpoints.WORKER_ACKED}=exit", 0, *DONE, calls=1, attempts=1),
    # The same crash before sending, for a write no read can prove: a takeover cannot tell
    # "not sent" from "sent", so it never sends.
    "claimed_unprovable": CrashPoint(
        f"{failpoints.WORKER_CLAIMED}=exit", 0, *UNKNOWN, calls=0, attempts=2, method=UNPROVABLE
    ),
}


def _params(case: CrashPoint, point: str) -> dict[str, str]:
    if case.method == SET_META:
        return {"photo_id": PHOTO_ID, "title": f"once at {point}"}
    return {"photo_id": PHOTO_ID, "tags": f"once-at-{point}"}


async def _title(http: aiohttp.ClientSession, stack: ProcessStack) -> str:
    """The photo's title as the sandbox's getInfo tells it (a read needing no token)."""
    params = {
        "method": "flickr.photos.getInfo",
        "api_key": SANDBOX_DEMO_CONSUMER_KEY,
        "photo_id": PHOTO_ID,
        "format": "json",
        "nojsoncallback": "1",
    }
    async with http.get(sandbox_url(stack, "/services/rest"), params=params) as resp:
        body = await resp.json(content_type=None)
    assert body["stat"] == "ok", body
    title: str = body["photo"]["title"]["_content"]
    return title


# Short takeovers keep each case to seconds; the dead worker may also hold the webhook's entry.
ENV = {"WORKER_VISIBILITY_TIMEOUT_S": "3", "WEBHOOK_VISIBILITY_TIMEOUT_S": "3"}


async def _work_entries(stack: ProcessStack) -> int:
    """Entries still in the work streams (a handled entry is acknowledged and deleted)."""
    redis = redisio.client(stack.settings.redis_url)
    try:
        return sum([await redis.xlen(keys.work_stream(target)) for target in keys.TARGETS])
    finally:
        await redis.aclose()


async def _wait_exit(worker: Managed, timeout: float = 30.0) -> int:
    """The exit code of a worker that is expected to die at its failpoint."""
    assert worker.proc is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (code := worker.proc.poll()) is None:
        assert loop.time() < deadline, f"{worker.name} never reached its failpoint"
        await asyncio.sleep(0.05)
    return code


@pytest.fixture(scope="module")
def crash_stack() -> Iterator[ProcessStack]:
    """One stack for every case: a case needs workers of its own, not stores and services."""
    with process_stack(workers=0, env=ENV) as stack:
        yield stack


@pytest.mark.parametrize("point", list(CASES))
async def test_a_worker_killed_at_any_step_of_a_write_never_sends_it_twice(
    point: str, crash_stack: ProcessStack
) -> None:
    case = CASES[point]
    stack = crash_stack
    receiver = await Receiver().start()
    workers = len(stack.workers)
    try:
        channel, stub = grpc_stub(stack)
        async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            # The photo's default title, no call and no fault left by an earlier case.
            async with http.post(sandbox_url(stack, "/_sandbox/reset")) as resp:
                assert resp.status == 204
            if case.latency_ms:
                await add_fault(
                    http, stack, method=case.method, kind="latency", latency_ms=case.latency_ms, times=1
                )
            first = stack.add_worker(env={"FAILPOINTS": case.armed})
            job = await stub.SubmitJob(
                jobs_pb2.SubmitJobRequest(
                    user_id=DEMO_USER,
                    method=case.method,
                    params=_params(case, point),
                    callback_url=receiver.url,
                    callback_secret="0123456789abcdef-secret",
                )
            )
            assert await _wait_exit(first) == failpoints.EXIT_CODE
            stack.add_worker()
            done = await wait_final_grpc(stub, job.job_id, timeout=40)
            await receiver.wait_for(job.job_id)
            # Nothing queued is left: no second call or second webhook can come after this.
            await wait_settled(stack)
            calls = await sandbox_calls(http, stack, case.method)
            again = await wait_final_grpc(stub, job.job_id)
            title = await _title(http, stack)
            left = await _work_entries(stack)
    finally:
        # The next case's armed worker must be the only one: stop this case's workers.
        await asyncio.to_thread(stop_all, stack.workers[workers:])
        await receiver.stop()
    assert (done.state, done.error.code) == (case.state, case.error_code)
    assert done.attempts == case.attempts
    assert (again.state, again.attempts) == (done.state, done.attempts)  # nothing ran after
    assert len(calls) == case.calls
    assert ("reconciled" in done.result.fields) == case.reconciled
    assert title == (f"once at {point}" if case.method == SET_META else DEFAULT_TITLE)
    assert left == 0
    deliveries = [d for d in receiver.deliveries if d.payload["job_id"] == job.job_id]
    assert [d.payload["state"] for d in deliveries] == [jobs.state_from_proto(case.state)]
