"""Putting a job into its token's queue: one place for the gateway and the mover's retry pump."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio.client import Pipeline

from common import keys, redisio
from common.jobs import JobEntry


def append(pipe: Pipeline, entry: JobEntry) -> None:
    """Queue the XADD of `entry` to its token's stream for its priority (call `activate` after)."""
    pipe.xadd(keys.token_stream(entry.token, entry.priority), redisio.fields(entry.to_fields()))


def activate(pipe: Pipeline, entries: Iterable[JobEntry]) -> None:
    """Queue marking the entries' tokens active (and naming their clients): two commands for any number.

    After the appends: the mover drops a token from the active set and then re-checks its streams,
    so a token whose stream holds work stays found.
    """
    tokens: dict[str, str] = {}
    for entry in entries:
        tokens[entry.token] = entry.client_id or tokens.get(entry.token, "")
    if not tokens:
        return
    named: dict[Any, Any] = {token: client for token, client in tokens.items() if client}
    if named:
        pipe.hset(keys.TOKEN_CLIENTS, mapping=named)
    pipe.sadd(keys.ACTIVE_TOKENS, *tokens)


def enqueue(pipe: Pipeline, entry: JobEntry) -> None:
    """Queue `entry` on `pipe` in its token's stream for its priority and mark the token active."""
    append(pipe, entry)
    activate(pipe, [entry])
