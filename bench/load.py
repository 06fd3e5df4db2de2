"""FlickrHub's load driver: submit jobs over gRPC at a chosen concurrency and follow them to the end.

Works against any running gateway (`python -m bench.load --target 127.0.0.1:50051`),
e.g. the one `make run` starts. ghz users have bench/ghz/ for the submit-only part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass

import grpc

from cli import credentials
from common.settings import Settings
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc

FINAL = {
    jobs_pb2.JOB_STATE_COMPLETED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_CANCELLED,
    jobs_pb2.JOB_STATE_EXPIRED,
}


@dataclass
class LoadResult:
    """What one load run measured."""

    jobs: int
    concurrency: int
    submit_seconds: float
    submits_per_s: float
    submit_p50_ms: float
    submit_p99_ms: float
    end_to_end_seconds: float
    completed_per_s: float
    completed: int
    failed: int
    errors: int


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    target: str,
    n: int,
    concurrency: int,
    user_id: str,
    method: str = "flickr.test.echo",
    api_key: str = "",
) -> LoadResult:
    """Submit `n` jobs with `concurrency` callers, then poll until every one is final."""
    channel_cm = (
        credentials.authenticated_channel(target, api_key) if api_key else grpc.aio.insecure_channel(target)
    )
    async with channel_cm as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        latencies: list[float] = []
        job_ids: list[str] = []
        errors = 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def submitter() -> None:
            nonlocal errors
            while not queue.empty():
                i = queue.get_nowait()
                started = time.perf_counter()
                try:
                    resp = await stub.SubmitJob(
                        jobs_pb2.SubmitJobRequest(user_id=user_id, method=method, params={"n": str(i)}),
                        timeout=30,
                    )
                    job_ids.append(resp.job_id)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submit_s = time.perf_counter() - t0
        # Jobs finish roughly in submission order: poll the oldest unfinished few, not all of them,
        # so the driver does not load MongoDB with reads it does not need.
        pending = list(job_ids)
        completed = failed = 0
        while pending:
            head = pending[:50]
            jobs = await asyncio.gather(
                *(stub.GetJob(jobs_pb2.GetJobRequest(job_id=j), timeout=30) for j in head)
            )
            done = {job.job_id for job in jobs if job.state in FINAL}
            completed += sum(1 for job in jobs if job.state == jobs_pb2.JOB_STATE_COMPLETED)
            failed += sum(
                1 for job in jobs if job.state in FINAL and job.state != jobs_pb2.JOB_STATE_COMPLETED
            )
            pending = [j for j in pending if j not in done]
            if len(done) < len(head):
                await asyncio.sleep(0.2)
        total_s = time.perf_counter() - t0
    return LoadResult(
        jobs=n,
        concurrency=concurrency,
        submit_seconds=round(submit_s, 3),
        submits_per_s=round(len(job_ids) / submit_s, 1),
        submit_p50_ms=round(statistics.median(latencies), 2) if latencies else 0.0,
        submit_p99_ms=round(_pct(latencies, 0.99), 2),
        end_to_end_seconds=round(total_s, 3),
        completed_per_s=round(completed / total_s, 1),
        completed=completed,
        failed=failed,
        errors=errors,
    )


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--user-id", default="demo-user")
    parser.add_argument("--method", default="flickr.test.echo")
    parser.add_argument(
        "--api-key", default=Settings.from_env().flickrhub_api_key, help="default: FLICKRHUB_API_KEY"
    )
    opts = parser.parse_args()
    result = asyncio.run(
        run_load(opts.target, opts.jobs, opts.concurrency, opts.user_id, opts.method, opts.api_key)
    )
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
