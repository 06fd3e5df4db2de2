"""Turns per user at ingress: one user's flood of submissions cannot fill the gateway.

A user (a Flickr token) whose calls arrive faster than they can be accepted has at most
`limit` of them in progress at once; the rest wait here, in arrival order, without costing
anything but a future each. Another user's call never waits behind them: the gateway's event
loop, the admission step and the group commit see at most `limit` calls of any one user.
What it protects is the latency of the other users while one floods (the mover then shares
the work fairly); the flood itself is admitted as fast as before, since accepting a call is
over in milliseconds once it gets its turn.

`acquire` / `release`, not an async context manager: SubmitJob takes a turn on every call,
and a counter that is under the limit with nobody waiting costs a dict lookup (~1 µs), where
an @asynccontextmanager around a semaphore cost ~5.5 µs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class _Key:
    """One key's turns: how many are held, and the callers waiting for one (oldest first)."""

    __slots__ = ("held", "waiting")

    def __init__(self) -> None:
        self.held = 1
        self.waiting: deque[asyncio.Future[None]] = deque()


class Turns:
    """At most `limit` holders per key at once (0: no limit); a key's state lives while it is used."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: dict[Hashable, _Key] = {}

    async def acquire(self, key: Hashable) -> None:
        """Take one of `key`'s turns, waiting in arrival order while all are held; `release` it after."""
        if self.limit <= 0:
            return
        turns = self._keys.get(key)
        if turns is None:
            self._keys[key] = _Key()
            return
        if turns.held < self.limit and not turns.waiting:
            turns.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        turns.waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # still waiting: leave the line (release skips it if it already left)
                if waiter in turns.waiting:
                    turns.waiting.remove(waiter)
            else:  # handed a turn, then cancelled before it resumed: pass the turn on
                self.release(key)
            raise

    def release(self, key: Hashable) -> None:
        """Give back a turn taken with `acquire`: the longest waiting caller gets it, if any."""
        if self.limit <= 0:
            return
        turns = self._keys[key]
        while turns.waiting:
            waiter = turns.waiting.popleft()
            if not waiter.done():  # a cancelled waiter is done: skip it
                waiter.set_result(None)  # the turn changes hands: `held` stays
                return
        turns.held -= 1
        if not turns.held:
            del self._keys[key]

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one of `key`'s turns for the body (`acquire` and `release` around it)."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    @property
    def keys(self) -> int:
        """Keys with a call in progress or waiting."""
        return len(self._keys)
