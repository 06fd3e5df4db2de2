"""Fairness and the mover's own speed.

* fairness: the p99 completion time (job document created → finished) of a few small
  tokens' jobs while one token has a 10,000-job flood queued, against the same jobs run
  alone on the same process stack (target: at most 2x). Real gateway, mover, workers and
  sandbox; a budget roomy enough that Flickr's limit is not what is measured.
* mover: entries moved per second by one mover alone (pre-filled token queues, no
  workers), against batched XADDs of the same entries on the same Redis.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from common import credentials, keys, redisio, tokenqueue
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
WAVES = 8  # each wave: one job for every small token at once
WAVE_GAP_S = 0.15
FINAL = ("completed", "failed", "expired", "cancelled")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _small_waves(stub: jobs_pb2_grpc.JobServiceAsyncStub, users: list[str], tag: str) -> list[str]:
    ids: list[str] = []
    for wave in range(WAVES):
        responses = await asyncio.gather(
            *(
                stub.SubmitJob(
                    jobs_pb2.SubmitJobRequest(
                        user_id=user, method="flickr.test.echo", params={"tag": tag, "w": str(wave)}
                    ),
                    timeout=30,
                )
                for user in users
            )
        )
        ids.extend(r.job_id for r in responses)
        await asyncio.sleep(WAVE_GAP_S)
    return ids


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


async def _flood(stub: jobs_pb2_grpc.JobServiceAsyncStub, n: int, concurrency: int = 50) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def submitter() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await stub.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"f": str(i)}),
                timeout=30,
            )

    await asyncio.gather(*(submitter() for _ in range(concurrency)))


async def _open_jobs(mongo: Mongo, token: str) -> int:
    return await mongo.jobs.count_documents({"token_id_hash": token, "status": {"$nin": list(FINAL)}})


def fairness(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Small tokens' p99 completion alone and during a flood on another token (process stack)."""
    env = {
        "LOG_LEVEL": "WARNING",
        "FLICKR_BUDGET_BURST": "100000",  # the budget must not be what is measured
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
    target = f"127.0.0.1:{stack.ports.gateway}"
    try:
        async with credentials.authenticated_channel(target, stack.keys.admin_key) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            await _completion_ms(mongo, await _small_waves(stub, users, "warm-up"))
            alone = await _completion_ms(mongo, await _small_waves(stub, users, "alone"))
            # The flood is queued while no worker runs, so the measurement starts with it all waiting.
            for worker in list(stack.workers):
                worker.stop()
            stack.workers.clear()
            t0 = time.perf_counter()
            await _flood(stub, FLOOD)
            flood_submit_s = time.perf_counter() - t0
            for _ in range(2):
                stack.add_worker()
            await asyncio.sleep(3.0)  # workers up and busy with the flood
            open_before = await _open_jobs(mongo, flood_token)
            during = await _completion_ms(mongo, await _small_waves(stub, users, "flood"))
            open_after = await _open_jobs(mongo, flood_token)
    except grpc.aio.AioRpcError as exc:
        raise RuntimeError(f"fairness bench: {exc.code().name}: {exc.details()}") from exc
    finally:
        await mongo.close()
    p99_alone, p99_flood = _pct(alone, 0.99), _pct(during, 0.99)
    return {
        "small_tokens": SMALL_TOKENS,
        "small_jobs": len(alone),
        "flood_jobs": FLOOD,
        "flood_submit_seconds": round(flood_submit_s, 1),
        "small_p50_ms_alone": round(_pct(alone, 0.5), 1),
        "small_p99_ms_alone": round(p99_alone, 1),
        "small_p50_ms_during_flood": round(_pct(during, 0.5), 1),
        "small_p99_ms_during_flood": round(p99_flood, 1),
        "flood_open_when_small_jobs_started": open_before,
        "flood_open_when_small_jobs_done": open_after,
        "p99_flood_vs_alone": round(p99_flood / p99_alone, 2) if p99_alone else None,
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
