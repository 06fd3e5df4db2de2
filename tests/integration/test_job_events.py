"""Job events: one PUBLISH per batch of transitions, each hint reaching only its job's watchers."""

from __future__ import annotations

import asyncio
import json

from common import keys, redisio
from common.announce import announce_on
from gateway.events import EventHub


async def test_a_batch_is_one_publish_and_each_watcher_gets_only_its_jobs_hints(
    redis_url: str, redis: redisio.Redis
) -> None:
    hub = EventHub(redis_url)
    await hub.start()
    try:
        async with hub.watch("job-a") as a, hub.watch("job-b") as b, hub.watch("job-b") as b2:
            await asyncio.sleep(0.05)
            await redis.config_resetstat()
            pipe = redis.pipeline(transaction=False)
            announce_on(
                pipe, [("job-a", "running", False), ("job-c", "running", False), ("job-b", "completed", True)]
            )
            await pipe.execute()
            stats = await redis.info("commandstats")
            assert stats["cmdstat_publish"]["calls"] == 1
            assert stats["cmdstat_xadd"]["calls"] == 1  # the one final state with a callback: its webhook
            got_a = json.loads(await asyncio.wait_for(a.get(), 2))
            got_b = json.loads(await asyncio.wait_for(b.get(), 2))
            assert got_a == {"job_id": "job-a", "state": "running"}
            assert got_b == {"job_id": "job-b", "state": "completed"}
            assert json.loads(await asyncio.wait_for(b2.get(), 2)) == got_b  # both watchers of job-b
            assert a.empty() and b.empty()
            # A malformed message changes nothing and the hub goes on.
            await redis.publish(keys.JOB_EVENTS, "not json")
            await redis.publish(
                keys.JOB_EVENTS, json.dumps([{"job_id": 5}, "x", {"job_id": "job-a", "state": "failed"}])
            )
            assert json.loads(await asyncio.wait_for(a.get(), 2))["state"] == "failed"
        assert not hub._watchers  # closed watches leave nothing behind
    finally:
        await hub.stop()
