"""common.resp.Multiplexed against a real redis-server: many callers on one connection, and its failures."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import redisio, resp
from devstack.stores import redis_server


async def test_concurrent_callers_each_get_their_own_replies_in_order(
    redis_url: str, redis: redisio.Redis
) -> None:
    wire = resp.Multiplexed(redis_url)
    try:

        async def caller(i: int) -> list[object]:
            return await wire.execute(
                [("INCRBY", f"n:{i}", i), ("SET", f"s:{i}", "x" * (i * 997)), ("GET", f"s:{i}")]
            )

        results = await asyncio.gather(*(caller(i) for i in range(200)))
        for i, (count, ok, value) in enumerate(results):
            assert (count, ok, value) == (i, "OK", "x" * (i * 997))  # some replies span many reads
        assert await wire.execute([]) == []
        # An error reply comes back in its place; the calls around it are unaffected.
        replies = await wire.execute(
            [("SET", "k", "v"), ("INCR", "k"), ("GET", "k"), ("EVAL", "return {1, {2, 'a'}}", 0)]
        )
        assert replies[0] == "OK" and isinstance(replies[1], ResponseError) and replies[2] == "v"
        assert replies[3] == [1, [2, "a"]]
        # A redis-py pipeline, built as usual, sent raw.
        pipe = redis.pipeline(transaction=False)
        pipe.set("p", "1", ex=60, nx=True)
        pipe.xadd("stream", {"a": "b"})
        pipe.sadd("set", "m")
        ok, entry_id, added = await resp.run(pipe, wire)
        assert ok == "OK" and isinstance(entry_id, str) and "-" in entry_id and added == 1
        assert await resp.run(pipe, None) == [None, pipe_result_like(entry_id), 0]
    finally:
        await wire.close()


def pipe_result_like(entry_id: str) -> object:
    """Matches any stream entry id other than `entry_id` (redis-py ran the same XADD again)."""

    class _Other:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and other != entry_id and "-" in other

    return _Other()


async def test_a_caller_that_gives_up_does_not_shift_the_replies_of_the_others(redis_url: str) -> None:
    wire = resp.Multiplexed(redis_url)
    try:
        # BLPOP on an empty list holds this connection's replies for 0.2 s (DEBUG SLEEP is disabled).
        slow = asyncio.ensure_future(wire.execute([("BLPOP", "nothing", "0.2"), ("SET", "a", "1")]))
        await asyncio.sleep(0.05)
        after = asyncio.ensure_future(wire.execute([("GET", "a"), ("SET", "b", "2")]))
        slow.cancel()
        assert await after == ["1", "OK"]  # the cancelled call's replies were read and dropped
        assert await wire.execute([("GET", "b")]) == ["2"]
    finally:
        await wire.close()


async def test_a_silent_redis_times_the_calls_out_and_the_next_call_connects_again(redis_url: str) -> None:
    wire = resp.Multiplexed(redis_url, timeout_s=0.1)
    try:
        with pytest.raises(RedisTimeoutError):
            await wire.execute([("BLPOP", "nothing", "0.3")])
        await asyncio.sleep(0.3)
        assert await wire.execute([("PING",)]) == ["PONG"]
    finally:
        await wire.close()


async def test_a_killed_redis_fails_the_calls_in_flight_and_a_restarted_one_is_reached_again(
    tmp_path: Path,
) -> None:
    server = redis_server("cache", tmp_path).start()
    wire = resp.Multiplexed(f"redis://127.0.0.1:{server.port}/2")  # SELECT 2 on every new connection
    try:
        assert await wire.execute([("SET", "here", "1")]) == ["OK"]
        stuck = asyncio.ensure_future(wire.execute([("BLPOP", "nothing", "2")]))
        await asyncio.sleep(0.1)
        server.signal(signal.SIGKILL)
        with pytest.raises(RedisConnectionError):
            await stuck
        with pytest.raises(RedisConnectionError):
            await wire.execute([("PING",)])  # refused while it is down
        server = redis_server("cache", tmp_path, port=server.port).start()
        assert (await wire.execute([("SET", "there", "2")])) == ["OK"]
        info = (await wire.execute([("CLIENT", "INFO")]))[0]
        assert " db=2 " in f" {info} "
    finally:
        await wire.close()
        server.stop()


async def test_a_password_is_sent_on_connect_and_a_wrong_one_is_a_connection_error(tmp_path: Path) -> None:
    server = redis_server("cache", tmp_path).start()
    try:
        admin = resp.Multiplexed(f"redis://127.0.0.1:{server.port}/0")
        await admin.execute([("CONFIG", "SET", "requirepass", "s3cret")])
        await admin.close()
        good = resp.Multiplexed(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await good.execute([("PING",)]) == ["PONG"]
        await good.close()
        bad = resp.Multiplexed(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisConnectionError, match="refused"):
            await bad.execute([("PING",)])
        await bad.close()
    finally:
        server.stop()
