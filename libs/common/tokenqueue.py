"""Putting a job into its token's queue: one place for the gateway and the mover's retry pump."""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from common import keys, redisio
from common.jobs import JobEntry


def enqueue(pipe: Pipeline, entry: JobEntry) -> None:
    """Queue `entry` on `pipe` in its token's stream for its priority and mark the token active.

    The append comes first: the mover drops a token from the active set only in one atomic step
    with the check that all its streams are empty, so a token whose stream holds work stays found.
    """
    pipe.xadd(keys.token_stream(entry.token, entry.priority), redisio.fields(entry.to_fields()))
    if entry.client_id:
        pipe.hset(keys.TOKEN_CLIENTS, entry.token, entry.client_id)
    pipe.sadd(keys.ACTIVE_TOKENS, entry.token)
