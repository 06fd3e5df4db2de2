"""The queue Redis wiped (FLUSHALL) with 1,000 jobs in flight: MongoDB rebuilds it, each job runs once."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

import aiohttp
import pytest

from common import redisio
from common.mongo import Mongo
from devstack.seed import DEMO_USER
from devstack.stack import ProcessStack
from flickrhub.v1 import jobs_pb2
from tests.e2e.conftest import process_stack
from tests.e2e.helpers import add_fault, auth_headers, grpc_stub, sandbox_calls, wait_all_final

pytestmark = pytest.mark.e2e

JOBS = 1000
# Slow enough that a wipe halfway through the submissions finds jobs in every place: token queues,
# work streams, workers' hands (16 calls at a time of 150 ms), and finished.
ENV = {
    "RECOVERY_CHECK_S": "0.5",
    "WORKER_CONCURRENCY": "8",
    # Every job has one token: the default cap of 4 in flight per token would hold the workers'
    # 16 slots to 4 (about 26 jobs/s instead of about 100).
    "MOVER_TOKEN_IN_FLIGHT": "16",
    "CLIENT_MAX_PENDING_JOBS": "5000",
}


def _sweeps(stack: ProcessStack) -> list[dict[str, Any]]:
    """The movers' recovery log lines."""
    found = []
    for mover in stack.movers:
        for line in mover.log_path.read_text(errors="replace").splitlines():
            if "recovery sweep" in line and line.startswith("{"):
                found.append(json.loads(line))
    return found


async def test_flushall_with_a_thousand_jobs_in_flight_ends_every_job_exactly_once() -> None:
    with process_stack(workers=2, env=ENV) as stack:
        channel, stub = grpc_stub(stack)
        redis = redisio.client(stack.settings.redis_url)
        mongo = Mongo.connect(stack.settings.mongo_url, stack.settings.mongo_db)
        try:
            async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
                await add_fault(
                    http, stack, method="flickr.test.echo", kind="latency", latency_ms=150, times=-1
                )
                job_ids: list[str] = []

                async def submit_all(start: int) -> None:
                    for i in range(start, JOBS, 10):
                        req = jobs_pb2.SubmitJobRequest(
                            # No cache: a second run would reach the sandbox and show in its log.
                            user_id=DEMO_USER,
                            method="flickr.test.echo",
                            params={"k": str(i)},
                            cache_bypass=True,
                        )
                        job_ids.append((await stub.SubmitJob(req, timeout=30)).job_id)

                started = time.monotonic()
                submitting = asyncio.gather(*(submit_all(k) for k in range(10)))
                while len(job_ids) < JOBS // 2:
                    await asyncio.sleep(0.01)
                at_wipe = collections.Counter(
                    [d["status"] async for d in mongo.jobs.find({}, {"status": 1, "_id": 0})]
                )
                await redis.flushall()
                wiped, wiped_at = time.monotonic(), time.time()
                await submitting
                done = await wait_all_final(stub, job_ids, timeout=170)
                finished = time.monotonic()
                calls = await sandbox_calls(http, stack, "flickr.test.echo")
            docs = [d async for d in mongo.jobs.find({}, {"attempts": 1, "finished_at": 1, "_id": 0})]
            attempts = collections.Counter(int(d["attempts"]) for d in docs)
            last_finish = max(d["finished_at"].timestamp() for d in docs) - wiped_at
            sweeps = _sweeps(stack)
            regrouped = sum(w.log_path.read_text(errors="replace").count("vanished") for w in stack.workers)
        finally:
            await mongo.close()
            await redis.aclose()

    full = [s for s in sweeps if s.get("full")]
    recovered = sum(int(s["message"].split()[3]) for s in full)
    print(
        f"\n{JOBS} jobs; at the wipe (after {wiped - started:.1f}s) MongoDB held {dict(at_wipe)}; "
        f"last job finished {last_finish:.1f}s after the wipe, all seen final by polling after "
        f"{finished - wiped:.1f}s ({finished - started:.1f}s in all); full sweeps re-enqueued {recovered} "
        f"({[(s.get('by_status'), s.get('seconds')) for s in full]})"
    )
    assert len(done) == JOBS
    assert {d.state for d in done} == {jobs_pb2.JOB_STATE_COMPLETED}
    executed = collections.Counter(int(c["params"]["k"]) for c in calls if "k" in c["params"])
    assert sorted(executed) == list(range(JOBS))
    assert set(executed.values()) == {1}, [k for k, n in executed.items() if n > 1][:20]
    assert attempts == {1: JOBS}  # nobody died, so no job was ever claimed twice
    # The wipe hit jobs in flight, and the sweep is what brought them back.
    assert at_wipe.get("queued", 0) > 0
    assert recovered >= at_wipe["queued"] // 2
    assert regrouped > 0  # the workers met NOGROUP on the wiped streams and made their group again
