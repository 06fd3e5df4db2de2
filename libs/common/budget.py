"""Flickr's hourly call budget per API key, shared by every mover replica through Redis.

GCRA (generic cell rate algorithm) in one Lua script: the key holds the
"theoretical arrival time" of the next call. Calls are spaced by an emission
interval T and at most `burst` may go early, so calls are smoothed over the
hour (never 3,500 in the first minute). To guarantee the hourly limit itself,
T is derived from `limit - burst`: any window of one hour then grants at most
`(limit - burst) + burst = limit` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common import redisio

HOUR_MS = 3_600_000

# KEYS[1]: the budget key. ARGV: wanted, emission interval (ms), burst tolerance (ms), now (ms, or -1:
# use the Redis clock, so replicas on skewed hosts agree). Returns {granted, wait_ms}.
_TAKE = """
local now = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local wanted = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tolerance + interval - tat) / interval + 1e-9)
if room < 0 then room = 0 end
local granted = math.min(wanted, room)
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now + interval))
end
local wait = 0
if granted < wanted then wait = math.ceil(tat - tolerance - now) end
if granted < wanted and wait < 1 then wait = 1 end
return {granted, wait}
"""


@dataclass(frozen=True)
class Grant:
    """How many calls may go now, and how long until the next one may."""

    granted: int
    wait_ms: int

    @classmethod
    def from_reply(cls, reply: Sequence[object]) -> Grant:
        """The grant a take sent as `Budget.take_command` answered."""
        return cls(int(str(reply[0])), int(str(reply[1])))


class Budget:
    """A smoothed hourly budget for one Flickr API key."""

    def __init__(self, redis: redisio.Redis, key: str, limit_per_hour: int, burst: int = 5) -> None:
        if limit_per_hour <= burst:
            raise ValueError("the hourly limit must exceed the burst")
        self._redis = redis
        self._key = key
        self.limit_per_hour = limit_per_hour
        self.burst = burst
        self.interval_ms = HOUR_MS / (limit_per_hour - burst)
        self._tolerance_ms = self.interval_ms * (burst - 1)
        self._take = redis.register_script(_TAKE)

    async def take(self, wanted: int, now_ms: float | None = None) -> Grant:
        """Take up to `wanted` calls; `now_ms` only for tests that drive the clock."""
        if wanted <= 0:
            return Grant(0, 0)
        granted, wait = await self._take(
            keys=[self._key],
            args=[wanted, self.interval_ms, self._tolerance_ms, -1 if now_ms is None else now_ms],
        )
        return Grant(int(granted), int(wait))

    def take_command(self, wanted: int) -> tuple[str | int | float, ...]:
        """The command that takes `wanted` (> 0) calls, for a caller that sends it with others in one
        round trip; its reply reads with `Grant.from_reply`.

        EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot.
        """
        return ("EVAL", _TAKE, 1, self._key, wanted, self.interval_ms, self._tolerance_ms, -1)
