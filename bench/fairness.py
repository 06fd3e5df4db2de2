"""Fairness and the mover's own speed.

* fairness: the p99 completion time (job document created → finished) of a few small
  tokens' jobs while one token has a 10,000-job flood queued, against the same jobs run
  alone on the same process stack with the same settings (target: at most 2x). Real
  gateway, mover, workers and sandbox. Two scenarios in one run, each with its own
  baseline:

  - budget-bound, as production runs: the Flickr budget is the bottleneck, set to a third
    (BUDGET_SHARE) of what the stack completes per second, measured at the start of the
    same run (the machine is shared, so a fixed figure could be saturating one day and
    idle the next), with a small burst; the flood waits in its token queue and the
    question is whether a small token gets its share of the budget at once;
  - saturated: an effectively unlimited budget, so the machine's CPU is the bottleneck
    and every small job competes with the flood's jobs in flight for it.

  Small tokens submit at staggered times, well below their fair share of the budget, so
  the "alone" runs measure the pipeline's latency, not a queue of small jobs.
* mover: entries moved per second by one mover alone (pre-filled token queues, no
  workers), against batched XADDs of the same entries on the same Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from redis.exceptions import ResponseError

from cli import credentials
from common import keys, redisio, tokenqueue
from common.jobs import JobEntry
from common.mongo import Mongo
from common.settings import Settings
from devstack import seed
from devstack.seed import DEMO_USER
from devstack.stack import Ports, ProcessStack
from devstack.stores import redis_server
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from mover.mover import Mover

FLOOD = 10_000
SMALL_TOKENS = 5
SMALL_JOBS_PER_TOKEN = 10
SMALL_PERIOD_S = 1.0  # each small token submits one job a second, the tokens staggered over the second
FINAL = ("completed", "failed", "expired", "cancelled")
# Budget-bound scenario: this share of the stack's measured throughput, and a small burst.
BUDGET_SHARE = 1 / 3
BUDGET_BURST = 5
PROBE_JOBS = 400  # the throughput probe: jobs on the flood token, submitted in batches, run to the end
# Saturated scenario: the stack's roomy default budget, and a burst that never caps a round.
UNLIMITED_ENV = {"FLICKR_BUDGET_PER_HOUR": "36000000", "FLICKR_BUDGET_BURST": "100000"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _small_jobs(stub: jobs_pb2_grpc.JobServiceAsyncStub, users: list[str], tag: str) -> list[str]:
    """Each small token submits SMALL_JOBS_PER_TOKEN jobs, one per period, offset from the others."""
    start = time.monotonic()

    async def one_token(i: int, user: str) -> list[str]:
        ids: list[str] = []
        for n in range(SMALL_JOBS_PER_TOKEN):
            due = start + (n + i / len(users)) * SMALL_PERIOD_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            response = await stub.SubmitJob(
                jobs_pb2.SubmitJobRequest(
                    user_id=user, method="flickr.test.echo", params={"tag": tag, "n": str(n)}
                ),
                timeout=30,
            )
            ids.append(response.job_id)
        return ids

    per_token = await asyncio.gather(*(one_token(i, user) for i, user in enumerate(users)))
    return [job_id for ids in per_token for job_id in ids]


async def _completion_ms(mongo: Mongo, ids: list[str], timeout_s: float = 120.0) -> list[float]:
    """Created → finished of each job, once all are final."""
    deadline = time.monotonic() + timeout_s
    while True:
        docs = [
            d
            async for d in mongo.jobs.find(
                {"job_id": {"$in": ids}}, {"status": 1, "created_at": 1, "finished_at": 1}
            )
        ]
        if len(docs) == len(ids) and all(d["status"] in FINAL for d in docs):
            return [(d["finished_at"] - d["created_at"]).total_seconds() * 1000 for d in docs]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(d['status'] not in FINAL for d in docs)} small jobs never finished")
        await asyncio.sleep(0.1)


async def _flood(
    stub: jobs_pb2_grpc.JobServiceAsyncStub, n: int, batch: int = 100, concurrency: int = 4
) -> None:
    """Queue n jobs on the demo user's token in SubmitJobs batches."""
    starts = list(range(0, n, batch))

    async def submitter() -> None:
        while starts:
            first = starts.pop()
            items = [
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"f": str(i)})
                for i in range(first, min(n, first + batch))
            ]
            await stub.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=items), timeout=60)

    await asyncio.gather(*(submitter() for _ in range(concurrency)))


async def _throughput(stub: jobs_pb2_grpc.JobServiceAsyncStub, mongo: Mongo, token: str) -> float:
    """Jobs completed per second by the stack with more queued than it can do (submitting no more)."""
    await _flood(stub, PROBE_JOBS)
    waiting, t0 = await _open_jobs(mongo, token), time.perf_counter()
    await _draining(mongo, token, 1, timeout_s=120.0)
    return waiting / (time.perf_counter() - t0)


async def _draining(mongo: Mongo, token: str, below: int, timeout_s: float = 60.0) -> None:
    """Wait until the flood's open jobs fall below `below` (the workers are up and busy with it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await _open_jobs(mongo, token) < below:
            return
        await asyncio.sleep(0.1)


async def _moved(redis: redisio.Redis) -> int:
    """Entries ever appended to the work streams (XINFO STREAM entries-added): the mover's moves."""
    total = 0
    for target in keys.TARGETS:
        with contextlib.suppress(ResponseError):  # a stream nothing was ever moved to does not exist
            total += int((await redis.xinfo_stream(keys.work_stream(target)))["entries-added"])
    return total


async def _open_jobs(mongo: Mongo, token: str) -> int:
    return await mongo.jobs.count_documents({"token_id_hash": token, "status": {"$nin": list(FINAL)}})


def _use_mover(stack: ProcessStack, env: dict[str, str]) -> None:
    """Replace the mover by one started with `env` (the budget is a mover setting)."""
    for mover in stack.movers:
        mover.stop()
        stack.procs.pop(mover.name, None)
    stack.movers.clear()
    stack.extra_env.update(env)
    stack.add_mover()


def _summary(alone: list[float], during: list[float]) -> dict[str, Any]:
    p99_alone, p99_flood = _pct(alone, 0.99), _pct(during, 0.99)
    return {
        "small_jobs": len(alone),
        "small_p50_ms_alone": round(_pct(alone, 0.5), 1),
        "small_p99_ms_alone": round(p99_alone, 1),
        "small_p50_ms_during_flood": round(_pct(during, 0.5), 1),
        "small_p99_ms_during_flood": round(p99_flood, 1),
        "p99_flood_vs_alone": round(p99_flood / p99_alone, 2) if p99_alone else None,
    }


def fairness(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Small tokens' p99 completion alone and during a flood on another token, budget-bound and saturated."""
    env = {
        "LOG_LEVEL": "WARNING",
        **UNLIMITED_ENV,
        "CLIENT_MAX_PENDING_JOBS": "1000000",  # one client (the admin key) submits the whole flood
        "MAX_BUFFERED_JOBS": "1000000",
        **(extra_env or {}),
    }
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-fair-") as tmp:
        stack = ProcessStack(Path(tmp), Ports.free(), workers=2, movers=1, env=env)
        try:
            stack.start()
            return asyncio.run(_fairness(stack))
        finally:
            stack.stop()


async def _fairness(stack: ProcessStack) -> dict[str, Any]:
    settings = stack.settings
    users = [f"small-{i}" for i in range(SMALL_TOKENS)]
    for user in users:
        await seed.seed_demo_token(settings, user, distinct=True)
    flood_token = (await seed.seed_demo_token(settings)).token_id_hash
    assert stack.keys is not None
    mongo = Mongo.connect(settings.mongo_url, settings.mongo_db)
    redis = redisio.client(settings.redis_url)
    target = f"127.0.0.1:{stack.ports.gateway}"
    t_start = time.perf_counter()
    try:
        async with credentials.authenticated_channel(target, stack.keys.admin_key) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)

            async def measure(tag: str) -> tuple[list[float], dict[str, Any]]:
                # Counting open jobs takes a while on SecantusDB: the moves are counted over the window alone.
                open_before = await _open_jobs(mongo, flood_token)
                moved_before, t0 = await _moved(redis), time.perf_counter()
                ms = await _completion_ms(mongo, await _small_jobs(stub, users, tag))
                moved, elapsed = await _moved(redis) - moved_before, time.perf_counter() - t0
                drained = open_before - await _open_jobs(mongo, flood_token)
                open_after = open_before - drained
                return ms, {
                    "flood_open_when_small_jobs_started": open_before,
                    "flood_open_when_small_jobs_done": open_after,
                    "flood_drain_per_s": round(drained / elapsed, 1),
                    "jobs_per_s": round((drained + len(ms)) / elapsed, 1),
                    "moves_per_s": round(moved / elapsed, 1),  # Flickr calls released by the mover
                }

            await _completion_ms(mongo, await _small_jobs(stub, users, "warm-up"))
            throughput = await _throughput(stub, mongo, flood_token)
            budget_per_s = max(2, round(throughput * BUDGET_SHARE))
            budget_env = {
                "FLICKR_BUDGET_PER_HOUR": str(budget_per_s * 3600),
                "FLICKR_BUDGET_BURST": str(BUDGET_BURST),
            }
            # Alone: the same small jobs with each scenario's settings, before the flood exists.
            alone_saturated, _ = await measure("alone-saturated")
            _use_mover(stack, budget_env)
            await _completion_ms(mongo, await _small_jobs(stub, users, "warm-up-budget"))  # mover up
            alone_budget, _ = await measure("alone-budget")
            # The flood is queued while no worker runs, so the measurement starts with it all waiting.
            for worker in list(stack.workers):
                worker.stop()
                stack.procs.pop(worker.name, None)
            stack.workers.clear()
            t0 = time.perf_counter()
            await _flood(stub, FLOOD)
            flood_submit_s = time.perf_counter() - t0
            for _ in range(2):
                stack.add_worker()
            # Workers up and past what the mover put in the work streams while they were away.
            await _draining(mongo, flood_token, FLOOD - 2 * settings.mover_work_backlog - 2 * BUDGET_BURST)
            await asyncio.sleep(1.0)
            during_budget, budget_flow = await measure("flood-budget")
            _use_mover(stack, UNLIMITED_ENV)
            open_now = await _open_jobs(mongo, flood_token)
            await _draining(mongo, flood_token, open_now - 100)  # the new mover is up
            await asyncio.sleep(2.0)  # workers saturated by the flood
            during_saturated, saturated_flow = await measure("flood-saturated")
    except grpc.aio.AioRpcError as exc:
        raise RuntimeError(f"fairness bench: {exc.code().name}: {exc.details()}") from exc
    finally:
        await mongo.close()
        await redis.aclose()
    budget = {
        "flickr_budget_per_hour": budget_per_s * 3600,
        "flickr_budget_burst": BUDGET_BURST,
        **_summary(alone_budget, during_budget),
        **budget_flow,
        "budget_used": round(budget_flow["moves_per_s"] / budget_per_s, 2),
    }
    saturated = {
        "flickr_budget_per_hour": int(UNLIMITED_ENV["FLICKR_BUDGET_PER_HOUR"]),
        **_summary(alone_saturated, during_saturated),
        **saturated_flow,
    }
    return {
        "small_tokens": SMALL_TOKENS,
        "small_jobs_per_s": round(SMALL_TOKENS / SMALL_PERIOD_S, 1),
        "flood_jobs": FLOOD,
        "flood_submit_seconds": round(flood_submit_s, 1),
        "work_backlog": settings.mover_work_backlog,
        "probe_jobs_per_s": round(throughput, 1),
        "budget_bound": budget,
        "saturated": saturated,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def mover_throughput(tokens: int = 50, per_token: int = 400) -> dict[str, Any]:
    """Moves per second of one mover alone, against batched XADDs of the same entries."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-mover-") as tmp:
        redis = redis_server("queue", Path(tmp)).start()
        try:
            return asyncio.run(_mover_throughput(f"redis://127.0.0.1:{redis.port}/0", tokens, per_token))
        finally:
            redis.stop()


async def _mover_throughput(url: str, tokens: int, per_token: int) -> dict[str, Any]:
    settings = Settings.from_env(
        env={},
        redis_url=url,
        flickr_budget_per_hour=10**12,
        flickr_budget_burst=10**9,
        mover_work_backlog=10**9,  # nothing drains the work stream here
        mover_token_in_flight=10**9,  # nor finishes an entry (the cap's bookkeeping is still measured)
        mover_metrics_port=-1,
    )
    redis = redisio.client(url)
    entries = [
        JobEntry(
            job_id=f"{t}-{i}",
            token=f"token-{t}",
            user_id=f"user-{t}",
            method="flickr.test.echo",
            target="rest",
            params={"n": str(i)},
            max_attempts=5,
            priority=("high", "normal", "low")[i % 3],
            client_id=f"client-{t % 5}",
            trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
        for i in range(per_token)
        for t in range(tokens)
    ]
    try:
        # Baseline: the same entries appended in pipelines of 200 (the shape of one mover step).
        t0 = time.perf_counter()
        for start in range(0, len(entries), 200):
            pipe = redis.pipeline(transaction=False)
            for entry in entries[start : start + 200]:
                pipe.xadd("bench:baseline", redisio.fields(entry.to_fields()))
            await pipe.execute()
        baseline = len(entries) / (time.perf_counter() - t0)
        await redis.delete("bench:baseline")
        for start in range(0, len(entries), 500):
            pipe = redis.pipeline(transaction=False)
            for entry in entries[start : start + 500]:
                tokenqueue.enqueue(pipe, entry)
            await pipe.execute()
        mover = Mover(settings, redis, "bench-mover")
        moved, rounds = 0, 0
        t0 = time.perf_counter()
        while moved < len(entries):
            moved += await mover.run_round()
            rounds += 1
            if rounds > 100_000:
                raise RuntimeError(f"mover stalled at {moved} of {len(entries)}")
        elapsed = time.perf_counter() - t0
        assert await redis.xlen(keys.work_stream("rest")) == len(entries)
    finally:
        await redis.aclose()
    return {
        "entries": len(entries),
        "tokens": tokens,
        "rounds": rounds,
        "moves_per_s": round(moved / elapsed, 1),
        "baseline_batched_xadd_per_s": round(baseline, 1),
        "moves_vs_batched_xadd": round(moved / elapsed / baseline, 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps({"mover": mover_throughput(), "fairness": fairness()}, indent=2))
