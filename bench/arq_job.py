"""arq running no-op jobs: run by the arq virtual environment's Python, not the project's.

arq pins redis-py below 6, so it lives in a virtual environment of its own
(bench.baselines creates it) and this script imports nothing of FlickrHub.

    <arq-venv>/bin/python bench/arq_job.py <jobs> <enqueue concurrency> <max_jobs> <redis port>

Enqueues `jobs` no-op jobs (`concurrency` concurrent enqueuers), then runs one worker in
burst mode until the queue is empty, and prints JSON: the seconds and process CPU seconds
of each phase (the process's own counter, so start-up and imports are not counted).
"""

import asyncio
import json
import sys
import time

from arq import create_pool  # type: ignore[import-not-found, unused-ignore]
from arq.connections import RedisSettings  # type: ignore[import-not-found, unused-ignore]
from arq.worker import Worker  # type: ignore[import-not-found, unused-ignore]


async def noop(ctx: dict[str, object], n: int) -> int:
    return n


async def main(port: int, jobs: int, concurrency: int, max_jobs: int) -> dict[str, object]:
    settings = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(settings)
    numbers = iter(range(jobs))

    async def enqueuer() -> None:
        for i in numbers:
            await pool.enqueue_job("noop", i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(enqueuer() for _ in range(concurrency)))
    enqueue_cpu, enqueue_s = time.process_time() - cpu0, time.perf_counter() - t0
    worker = Worker(
        functions=[noop],
        redis_pool=pool,
        burst=True,
        max_jobs=max_jobs,
        handle_signals=False,
        log_results=False,
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    await worker.main()
    work_cpu, work_s = time.process_time() - cpu0, time.perf_counter() - t0
    done = worker.jobs_complete
    await worker.close()
    return {
        "jobs": jobs,
        "completed": done,
        "enqueue_s": enqueue_s,
        "enqueue_cpu_s": enqueue_cpu,
        "work_s": work_s,
        "work_cpu_s": work_cpu,
        "max_jobs": max_jobs,
        "enqueue_concurrency": concurrency,
    }


if __name__ == "__main__":
    jobs, concurrency, max_jobs, port = (int(a) for a in sys.argv[1:5])
    print(json.dumps(asyncio.run(main(port, jobs, concurrency, max_jobs))))
