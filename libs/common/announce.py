"""Telling the world a job changed state: the pub/sub hint for watchers and the webhook queue."""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio.client import Pipeline

from common import jobs, keys, redisio


def announce_on(pipe: Pipeline, changes: Sequence[tuple[str, str, bool]]) -> None:
    """Queue on `pipe` one hint for every (job id, new state, has callback) and, for a final state
    with a callback, its webhook."""
    if not changes:
        return
    hints = [{"job_id": job_id, "state": state} for job_id, state, _ in changes]
    pipe.publish(keys.JOB_EVENTS, json.dumps(hints, separators=(",", ":")))
    for job_id, state, has_callback in changes:
        if has_callback and state in jobs.FINAL_STATES:
            pipe.xadd(keys.WEBHOOKS, {"job_id": job_id, "state": state})


async def announce(redis: redisio.Redis, job_id: str, state: str, *, has_callback: bool) -> None:
    """Publish the new state; for a final state with a callback, queue its webhook (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    announce_on(pipe, [(job_id, state, has_callback)])
    await pipe.execute()
