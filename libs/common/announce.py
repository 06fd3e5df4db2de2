"""Telling the world a job changed state: the pub/sub hint for watchers and the webhook queue."""

from __future__ import annotations

import json

from redis.asyncio.client import Pipeline

from common import jobs, keys, redisio


def announce_on(pipe: Pipeline, job_id: str, state: str, *, has_callback: bool) -> None:
    """Queue the new state's hint and, for a final state with a callback, its webhook on `pipe`."""
    pipe.publish(keys.job_events(job_id), json.dumps({"job_id": job_id, "state": state}))
    if has_callback and state in jobs.FINAL_STATES:
        pipe.xadd(keys.WEBHOOKS, {"job_id": job_id, "state": state})


async def announce(redis: redisio.Redis, job_id: str, state: str, *, has_callback: bool) -> None:
    """Publish the new state; for a final state with a callback, queue its webhook (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    announce_on(pipe, job_id, state, has_callback=has_callback)
    await pipe.execute()
