"""Waiting for the queues to empty: after that, nothing can run a job or send a webhook again."""

from __future__ import annotations

import asyncio

from common import keys, redisio


async def wait_settled(redis: redisio.Redis, timeout: float = 30.0) -> None:
    """Wait until the token queues, the work streams and the webhook stream are empty, and no retry
    is scheduled.

    Handled entries are acknowledged and deleted, and every hand-over (a retry back to its token
    queue, a move to a work stream) adds the next entry before it removes the last. So once all are
    empty, no second Flickr call and no second webhook can come: a check for one made after this
    needs no fixed sleep.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = {stream: await redis.xlen(stream) for stream in await _streams(redis)}
        left[keys.DELAYED] = await redis.zcard(keys.DELAYED)
        busy = {name: n for name, n in left.items() if n}
        if not busy:
            return
        assert loop.time() < deadline, f"still queued after {timeout:.0f}s: {busy}"
        await asyncio.sleep(0.05)


async def _streams(redis: redisio.Redis) -> list[str]:
    """Every stream that feeds a run or a webhook: the work streams, the webhooks, the token queues."""
    names = [keys.work_stream(target) for target in keys.TARGETS] + [keys.WEBHOOKS]
    names += [str(name) async for name in redis.scan_iter(match=f"{keys.PREFIX}:q:*", _type="stream")]
    return names
