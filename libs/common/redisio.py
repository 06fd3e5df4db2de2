"""Redis connections and stream helpers shared by the services.

RESP2 is pinned because that is the reply shape this code parses. Blocking
reads get no socket timeout shorter than their BLOCK: a separate connection
pool is used for them (see `blocking_client`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Redis = aioredis.Redis

BLOCK_MS = 2000


def fields(values: Mapping[str, str]) -> dict[Any, Any]:
    """Stream entry fields as redis-py's (invariant) XADD signature wants them."""
    return dict(values)


def client(url: str, *, max_connections: int = 64, decode: bool = True) -> Redis:
    """A pooled client for short commands (5 s socket timeout, retried on connection errors).

    The pool blocks (up to 5 s) when all its connections are busy instead of failing: a burst of
    concurrent calls queues for a connection rather than erroring out (redis-py's default pool raises).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        protocol=2,
        decode_responses=decode,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=max_connections,
        timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


def blocking_client(url: str) -> Redis:
    """A client for XREADGROUP BLOCK: its socket timeout is longer than any BLOCK we issue."""
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        decode_responses=True,
        socket_timeout=BLOCK_MS / 1000 + 10,
        socket_connect_timeout=2,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create `group` on `stream` (and the stream) if missing; idempotent."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: BaseException) -> bool:
    """True when Redis lost the consumer group (restart without AOF, FLUSHALL)."""
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)
