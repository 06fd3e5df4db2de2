"""No accepted job is lost: a worker SIGKILLed mid-job, a Redis restart with jobs in flight."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest

from common.jobstore import JobStore
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
    wait_final_grpc,
    wait_settled,
)
from tests.e2e.webhook_receiver import Receiver
from tests.helpers.rich import result_of

pytestmark = pytest.mark.e2e


async def _wait_running(store: JobStore, job_id: str, timeout: float = 20.0) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        doc = await store.get(job_id)
        if doc is not None and doc["status"] == "running":
            return doc
        assert loop.time() < deadline, f"job never started: {doc}"
        await asyncio.sleep(0.05)


async def test_worker_killed_mid_job_is_finished_by_another_exactly_once() -> None:
    # One job, no load: a short visibility timeout brings the takeover sooner.
    with process_stack(workers=2, env={"WORKER_VISIBILITY_TIMEOUT_S": "3"}) as stack:
        mongo = Mongo.connect(stack.settings.mongo_url, stack.settings.mongo_db)
        store = JobStore(mongo.jobs)
        receiver = await Receiver().start()
        channel, stub = grpc_stub(stack)
        try:
            async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
                await add_fault(
                    http, stack, method="flickr.test.echo", kind="latency", latency_ms=5000, times=1
                )
                job = await stub.SubmitJob(
                    jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER,
                        method="flickr.test.echo",
                        params={"crash": "test"},
                        callback_url=receiver.url,
                        callback_secret="0123456789abcdef-secret",
                    )
                )
                running = await _wait_running(store, job.job_id)
                victim = next(w for w in stack.workers if str(w.proc.pid) in str(running["worker_id"]))  # type: ignore[union-attr]
                victim.kill()
                watch = [
                    u.state
                    async for u in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id), timeout=40)
                ]
                done = await wait_final_grpc(stub, job.job_id)
                await receiver.wait_for(job.job_id)
                await wait_settled(stack)  # nothing queued is left that could send a second webhook
                deliveries = [d for d in receiver.deliveries if d.payload["job_id"] == job.job_id]
            doc = await store.get(job.job_id)
        finally:
            await receiver.stop()
            await mongo.close()
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED
    assert done.attempts == 2
    assert doc is not None and doc["worker_id"] != running["worker_id"]
    assert watch.count(jobs_pb2.JOB_STATE_COMPLETED) == 1
    assert len(deliveries) == 1


async def test_redis_restart_with_jobs_in_flight_loses_none() -> None:
    with process_stack(workers=2) as stack:
        channel, stub = grpc_stub(stack)
        async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            await add_fault(http, stack, method="flickr.test.echo", kind="latency", latency_ms=200, times=-1)
            submitted = [
                await stub.SubmitJob(
                    jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.test.echo", params={"n": str(i)}
                    )
                )
                for i in range(60)
            ]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(stack.restart_redis)
            async with http.delete(f"http://127.0.0.1:{stack.ports.sandbox}/_sandbox/faults") as resp:
                assert resp.status == 204
            done = await wait_all_final(stub, [s.job_id for s in submitted])
    assert [d.state for d in done] == [jobs_pb2.JOB_STATE_COMPLETED] * len(submitted)
    assert sorted(int(result_of(d)["n"]["_content"]) for d in done) == list(range(60))


async def test_mover_killed_while_moving_loses_nothing_and_runs_nothing_twice() -> None:
    with process_stack(workers=2, movers=2) as stack:
        channel, stub = grpc_stub(stack)
        async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            job_ids: list[str] = []

            async def submit_all(start: int) -> None:
                for i in range(start, 300, 5):  # 5 steady submitters, 300 jobs in all
                    req = jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.test.echo", params={"m": str(i)}
                    )
                    job_ids.append((await stub.SubmitJob(req)).job_id)

            submitting = asyncio.gather(*(submit_all(k) for k in range(5)))
            await asyncio.sleep(0.3)
            stack.movers[0].kill()  # SIGKILL while jobs keep arriving and moving
            await submitting
            done = await wait_all_final(stub, job_ids)
            calls = await sandbox_calls(http, stack, "flickr.test.echo")
    assert len(done) == 300
    assert {d.state for d in done} == {jobs_pb2.JOB_STATE_COMPLETED}
    executed = sorted(int(c["params"]["m"]) for c in calls if "m" in c["params"])
    assert executed == list(range(300))


# Enough jobs that the kills land in every step of moving and running: the stack (CPU-bound on two
# cores) is still submitting or working through them at every kill. What spreads the kills over
# those steps is their number, so they come every 0.5 s and at least KILLS of them (2,000 jobs with a
# kill a second took 56 s for about 25 kills; 1,000 with at least 20 kills take about half).
JOBS = 1000
KILLS = 20


@pytest.mark.timeout(600)
async def test_three_movers_and_three_workers_under_random_sigkills_finish_every_job_once() -> None:
    import random

    rng = random.Random(20261129)
    with process_stack(workers=3, movers=3) as stack:
        channel, stub = grpc_stub(stack)
        async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            job_ids: list[str] = []
            pushed_back: list[int] = []

            async def submit_all(start: int) -> None:
                for i in range(start, JOBS, 10):
                    req = jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.test.echo", params={"k": str(i)}
                    )
                    while True:  # as a well-behaved client: back off while the hub pushes back
                        try:
                            job_ids.append((await stub.SubmitJob(req)).job_id)
                            break
                        except grpc.aio.AioRpcError as exc:
                            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                                raise
                            pushed_back.append(i)
                            await asyncio.sleep(0.2)

            submitting = asyncio.gather(*(submit_all(k) for k in range(10)))
            kills = 0
            while not submitting.done() or kills < KILLS:
                await asyncio.sleep(0.5)
                pool = [p for p in stack.workers + stack.movers if p.alive]
                victim = rng.choice(pool)
                victim.kill()
                kills += 1
                if victim in stack.workers:
                    stack.add_worker()
                else:
                    stack.add_mover()
            await submitting
            try:
                done = await wait_all_final(stub, job_ids, timeout=420)
            except JobsNotFinal as exc:
                raise AssertionError(f"{exc}\n{await diagnose(stack, exc.job_ids)}") from None
            calls = await sandbox_calls(http, stack, "flickr.test.echo")
    assert len(done) == JOBS
    assert {d.state for d in done} == {jobs_pb2.JOB_STATE_COMPLETED}
    executed = {int(c["params"]["k"]) for c in calls if "k" in c["params"]}
    assert executed == set(range(JOBS))
    # A read may run again when its worker died mid-call; that is the only way to a second call.
    assert len([c for c in calls if "k" in c["params"]]) - JOBS <= kills * 32
