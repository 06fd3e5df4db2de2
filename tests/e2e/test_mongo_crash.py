"""Acknowledged means durable: MongoDB SIGKILLed under a steady submission load loses no answered job.

Issue 9, item 4: with no write concern, SecantusDB answered a job insert before its WiredTiger log
buffer reached the OS, and a SIGKILL lost 11 of 1,200 answered jobs. Every durable collection now
writes with `w: majority, j: true` (common.mongo). Here several submitters keep calling SubmitJob
over gRPC while the MongoDB server is SIGKILLed, left down for a while and restarted on the same
data directory and port; afterwards every job answered with a job id is in MongoDB, completes, and
ran exactly once (the sandbox's call log holds its own tag once: a worker whose call ran while
MongoDB was away records the outcome when it is back instead of leaving the read to a takeover),
and every refusal during the outage carried a status a client retries.
"""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import grpc
import pytest

from common.mongo import Mongo
from devstack.seed import DEMO_USER
from flickrhub.v1 import jobs_pb2
from tests.e2e.conftest import process_stack
from tests.e2e.helpers import (
    JobsNotFinal,
    add_fault,
    auth_headers,
    diagnose,
    grpc_stub,
    sandbox_calls,
    wait_all_final,
)
from tests.helpers.rich import result_of

pytestmark = pytest.mark.e2e

JOBS = 600
SUBMITTERS = 8
KILL_AT = JOBS // 3  # answered jobs before the kill
OUTAGE_S = 6.0  # longer than the 5 s server selection timeout: some submissions must be refused
# What a well-behaved client retries (a refusal the hub answers while MongoDB is away, or its deadline).
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


async def _stored(store: Mongo, job_ids: dict[str, str]) -> collections.Counter[tuple[str, str]]:
    """(job id, status) of every document MongoDB holds for `job_ids`, counted."""
    found = store.jobs.find({"job_id": {"$in": list(job_ids)}}, {"job_id": 1, "status": 1})
    return collections.Counter([(d["job_id"], d["status"]) async for d in found])


# Every job has one token: the default cap of 4 in flight per token would run 40 calls/s of 100 ms.
ENV = {"MOVER_TOKEN_IN_FLIGHT": "16"}


@pytest.mark.timeout(300)
async def test_mongodb_sigkilled_under_submission_load_loses_no_answered_job() -> None:
    with process_stack(workers=2, env=ENV) as stack:
        mongo = stack.procs["mongo"]
        channel, stub = grpc_stub(stack)
        answered: dict[str, str] = {}  # job id -> the tag its params carried
        refused: collections.Counter[str] = collections.Counter()
        async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            # Calls take a while, so the kill finds some running: their outcome is recorded after it.
            await add_fault(http, stack, method="flickr.test.echo", kind="latency", latency_ms=100, times=-1)

            async def submit_all(first: int) -> None:
                for i in range(first, JOBS, SUBMITTERS):
                    for attempt in range(1000):
                        # A tag per submission: a refused one that was written anyway is told apart.
                        tag = f"{i}.{attempt}"
                        # Past the cache: a read run again would reach the sandbox's call log again.
                        request = jobs_pb2.SubmitJobRequest(
                            user_id=DEMO_USER,
                            method="flickr.test.echo",
                            params={"tag": tag},
                            cache_bypass=True,
                        )
                        try:
                            response = await stub.SubmitJob(request, timeout=10)
                        except grpc.aio.AioRpcError as exc:
                            if exc.code() not in RETRYABLE:  # a refusal a client would not retry
                                raise
                            refused[exc.code().name] += 1
                            await asyncio.sleep(0.2)
                            continue
                        answered[response.job_id] = tag
                        break

            submitting = asyncio.gather(*(submit_all(k) for k in range(SUBMITTERS)))
            loop = asyncio.get_running_loop()
            while len(answered) < KILL_AT:
                assert not submitting.done(), submitting.exception() if submitting.done() else None
                await asyncio.sleep(0.02)
            mongo.kill()  # SIGKILL: no checkpoint, no log flush, no goodbye
            answered_at_kill = len(answered)
            down_at = loop.time()
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(mongo.start, True, 60.0)  # same data dir, same port
            restarted_after = loop.time() - down_at
            await submitting
            # Read MongoDB itself, the source of truth, not the hot copy GetJob answers from.
            store = Mongo.connect(stack.settings.mongo_url, stack.settings.mongo_db)
            try:
                lost = set(answered) - {job_id for job_id, _ in await _stored(store, answered)}
                assert not lost, f"{len(lost)} answered jobs are not in MongoDB: {sorted(lost)[:10]}"
                try:
                    done = await wait_all_final(stub, list(answered), timeout=150)
                except JobsNotFinal as exc:
                    raise AssertionError(f"{exc}\n{await diagnose(stack, exc.job_ids)}") from None
                stored = await _stored(store, answered)
            finally:
                await store.close()
            calls = await sandbox_calls(http, stack, "flickr.test.echo")
            alive = {name: proc.alive for name, proc in stack.procs.items()}
        print(
            f"answered {len(answered)} ({answered_at_kill} before the kill), refused {dict(refused)}, "
            f"MongoDB back after {restarted_after:.1f} s, {len(calls)} sandbox calls"
        )
    # Every answered job is in MongoDB once, recorded completed, and GetJob agrees with its own params.
    assert len(answered) == JOBS
    assert sorted(stored) == sorted((job_id, "completed") for job_id in answered)
    assert set(stored.values()) == {1}
    assert [jobs_pb2.JobState.Name(d.state) for d in done] == ["JOB_STATE_COMPLETED"] * JOBS
    assert {d.job_id: result_of(d)["tag"]["_content"] for d in done} == answered
    # ... and ran exactly once: its tag reached Flickr (the sandbox) once.
    ran = collections.Counter(str(c["params"].get("tag")) for c in calls)
    assert {tag: ran[tag] for tag in answered.values() if ran[tag] != 1} == {}
    # The outage was long enough to refuse submissions, and every service got through it by itself.
    assert sum(refused.values()) > 0
    assert all(alive.values()), alive
