"""`make bench`: every benchmark in one run, each as a ratio to a baseline measured in the same run.

Results go to bench/results/latest.json (and are appended to history.jsonl) so a
closing note can quote them. The machine is shared and noisy: compare ratios, not
absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import auth_cost, cache_latency, edge_overhead, fairness, job_writes
from bench.load import run_load
from common.mongo import Mongo
from devstack.seed import DEMO_USER
from devstack.stack import Ports, ProcessStack
from devstack.stores import redis_server

RESULTS = Path(__file__).resolve().parent / "results"


async def bare_unary_rate(target: str, n: int, concurrency: int) -> float:
    """Baseline: health Check round trips per second against the same gateway process."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        per = n // concurrency

        async def one() -> None:
            for _ in range(per):
                await stub.Check(health_pb2.HealthCheckRequest())

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return per * concurrency / (time.perf_counter() - t0)


async def store_write_rate(mongo_url: str, db_name: str, n: int = 300) -> dict[str, float]:
    """Baseline: sequential job-shaped inserts and revision-guarded updates per second on the same MongoDB."""
    mongo = Mongo.connect(mongo_url, db_name)
    try:
        await mongo.ensure_indexes()
        ids = [uuid.uuid4().hex for _ in range(n)]
        t0 = time.perf_counter()
        for job_id in ids:
            await mongo.jobs.insert_one({"job_id": job_id, "rev": 0, "status": "queued", "user_id": "bench"})
        inserts = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for job_id in ids:
            await mongo.jobs.update_one(
                {"job_id": job_id, "rev": 0}, {"$set": {"status": "running"}, "$inc": {"rev": 1}}
            )
        updates = n / (time.perf_counter() - t0)
        await mongo.client.drop_database(db_name)
    finally:
        await mongo.close()
    return {"inserts_per_s": round(inserts, 1), "updates_per_s": round(updates, 1)}


def pipeline_bench(jobs: int, concurrency: int) -> dict[str, Any]:
    """End-to-end throughput of the process stack against the bare gRPC baseline."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-") as tmp:
        # One key submits every job faster than they finish: lift its pending-jobs cap (backpressure).
        env = {"LOG_LEVEL": "WARNING", "CLIENT_MAX_PENDING_JOBS": "1000000"}
        stack = ProcessStack(Path(tmp), Ports.free(), workers=2, movers=1, env=env)
        try:
            stack.start()
            target = f"127.0.0.1:{stack.ports.gateway}"
            assert stack.keys is not None
            key = stack.keys.admin_key
            asyncio.run(run_load(target, 200, concurrency, DEMO_USER, api_key=key))  # warm-up
            baseline = asyncio.run(bare_unary_rate(target, 4000, concurrency))
            store = asyncio.run(store_write_rate(stack.settings.mongo_url, "bench_store_baseline"))
            load = asyncio.run(run_load(target, jobs, concurrency, DEMO_USER, api_key=key))
        finally:
            stack.stop()
    return {
        "baseline_bare_unary_per_s": round(baseline, 1),
        **asdict(load),
        "submit_vs_bare_unary": round(load.submits_per_s / baseline, 3),
        "baseline_store": store,
        # A job costs one insert and two guarded updates (claim, outcome) in MongoDB.
        "completed_vs_store_bound": round(
            load.completed_per_s / (1 / (1 / store["inserts_per_s"] + 2 / store["updates_per_s"])), 3
        ),
    }


def main() -> None:
    """Run every benchmark and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--edge-requests", type=int, default=2000)
    parser.add_argument("--auth-requests", type=int, default=2000)
    parser.add_argument("--job-writes", type=int, default=500)
    opts = parser.parse_args()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
    }
    print("pipeline: submit and complete jobs through the process stack …", flush=True)
    results["pipeline"] = pipeline_bench(opts.jobs, opts.concurrency)
    print(json.dumps(results["pipeline"], indent=2), flush=True)
    print("edge: CPU per request through the REST edge vs direct gRPC …", flush=True)
    results["edge"] = edge_overhead.run(opts.edge_requests)
    print(json.dumps(results["edge"], indent=2), flush=True)
    print("auth: bcrypt check vs cached verification of an API key …", flush=True)
    results["auth"] = auth_cost.run(opts.auth_requests)
    print(json.dumps(results["auth"], indent=2), flush=True)
    print("job writes: job documents into MongoDB vs raw insert_one …", flush=True)
    results["job_writes"] = job_writes.run(opts.job_writes)
    print(json.dumps(results["job_writes"], indent=2), flush=True)
    print("cache: gRPC Get hit latency vs a bare Redis GET …", flush=True)
    results["cache"] = _run_cache_bench()
    print(json.dumps(results["cache"], indent=2), flush=True)
    print("mover: moves per second of one mover alone vs batched XADDs …", flush=True)
    results["mover"] = fairness.mover_throughput()
    print(json.dumps(results["mover"], indent=2), flush=True)
    print("fairness: small tokens' p99 during a 10,000-job flood vs alone …", flush=True)
    results["fairness"] = fairness.fairness()
    print(json.dumps(results["fairness"], indent=2), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    with (RESULTS / "history.jsonl").open("a") as history:
        history.write(json.dumps(results) + "\n")
    print(f"written to {RESULTS / 'latest.json'}")


def _run_cache_bench() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-cache-") as tmp:
        redis = redis_server("cache", Path(tmp)).start()
        try:
            result: dict[str, Any] = asyncio.run(cache_latency.run(3000, f"redis://127.0.0.1:{redis.port}/0"))
        finally:
            redis.stop()
    return result


if __name__ == "__main__":
    main()
