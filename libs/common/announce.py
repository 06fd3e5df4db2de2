"""Telling the world a job changed state: the pub/sub hint for watchers and the webhook queue."""

from __future__ import annotations

import json

from common import jobs, keys, redisio


async def announce(redis: redisio.Redis, job_id: str, state: str, *, has_callback: bool) -> None:
    """Publish the new state; for a final state with a callback, queue its webhook (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    pipe.publish(keys.job_events(job_id), json.dumps({"job_id": job_id, "state": state}))
    if has_callback and state in jobs.FINAL_STATES:
        pipe.xadd(keys.WEBHOOKS, {"job_id": job_id, "state": state})
    await pipe.execute()
