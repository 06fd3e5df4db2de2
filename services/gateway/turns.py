"""Turns per user at ingress: one user's flood of submissions cannot fill the gateway.

A user (a Flickr token) whose calls arrive faster than they can be accepted has at most
`limit` of them in progress at once; the rest wait here, in arrival order, without costing
anything but a future each. Another user's call never waits behind them: the gateway's event
loop, the admission step and the group commit see at most `limit` calls of any one user.
What it protects is the latency of the other users while one floods (the mover then shares
the work fairly); the flood itself is admitted as fast as before, since accepting a call is
over in milliseconds once it gets its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class _Turns:
    __slots__ = ("gate", "users")

    def __init__(self, limit: int) -> None:
        self.gate = asyncio.Semaphore(limit)
        self.users = 0


class Turns:
    """At most `limit` holders per key at once (0: no limit); a key's state lives while it is used."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: dict[Hashable, _Turns] = {}

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one of `key`'s turns for the body (waiting for one when all are held)."""
        if self.limit <= 0:
            yield
            return
        turns = self._keys.get(key)
        if turns is None:
            turns = self._keys[key] = _Turns(self.limit)
        turns.users += 1
        try:
            async with turns.gate:
                yield
        finally:
            turns.users -= 1
            if not turns.users:
                del self._keys[key]

    @property
    def keys(self) -> int:
        """Keys with a call in progress or waiting."""
        return len(self._keys)
