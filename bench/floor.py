"""The floor: a bare redis-py Streams pipeline doing the same no-op jobs, in batches.

    python -m bench.floor <jobs> <batch> <redis port>

Producer: XADD in pipelines of `batch`; consumer (a consumer group): XREADGROUP COUNT
`batch`, run the no-op, XACK the batch in one call. The phases run one after the other in
this process; it prints JSON with each phase's seconds and process CPU seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis

STREAM, GROUP = "floor:jobs", "floor"


async def main(port: int, jobs: int, batch: int) -> dict[str, Any]:
    client = aioredis.Redis(host="127.0.0.1", port=port)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, jobs, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(jobs, start + batch)):
            pipe.xadd(STREAM, {"fn": "noop", "n": str(i)})
        await pipe.execute()
    produce_cpu, produce_s = time.process_time() - cpu0, time.perf_counter() - t0
    done = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while done < jobs:
        got: Any = await client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=batch, block=1000)
        if not got:
            break
        ids = [entry_id for _, entries in got for entry_id, _fields in entries]
        done += len(ids)  # the no-op job
        await client.xack(STREAM, GROUP, *ids)
    work_cpu, work_s = time.process_time() - cpu0, time.perf_counter() - t0
    await client.aclose()
    return {
        "jobs": jobs,
        "completed": done,
        "batch": batch,
        "enqueue_s": produce_s,
        "enqueue_cpu_s": produce_cpu,
        "work_s": work_s,
        "work_cpu_s": work_cpu,
    }


if __name__ == "__main__":
    jobs, batch, port = (int(a) for a in sys.argv[1:4])
    print(json.dumps(asyncio.run(main(port, jobs, batch))))
