"""Circuit breakers with their state in Redis, shared by every mover and worker replica.

closed → (N consecutive failures) → open for a while → half-open: exactly one
caller gets the probe; its success closes the breaker, its failure reopens it
for longer (exponential backoff with jitter, reset by a success). A probe that
never reports (its caller died) expires, and the next caller gets a new probe.
All of a breaker's state lives in one hash, changed by one Lua script per step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common import keys, redisio

CLOSED, OPEN, PROBE = "closed", "open", "probe"

# KEYS[1]: breaker hash. ARGV: now ms (-1 = Redis clock), probe lease ms.
# Returns {decision, retry_after_ms}: decision is closed (go), probe (go, you are the probe) or open (wait).
_ALLOW = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return {'closed', 0} end
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if now < until_ms then return {'open', until_ms - now} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', now + tonumber(ARGV[2]))
return {'probe', 0}
"""

# KEYS[1]: breaker hash. ARGV: now ms (-1 = Redis clock), threshold, base open ms, max open ms, jitter (0..1).
# Returns {state after, open ms (0 when not opened now)}.
_FAILURE = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if state == 'open' then return {'open', 0} end
if state == 'closed' and failures < tonumber(ARGV[2]) then return {'closed', 0} end
local openings = tonumber(redis.call('HGET', KEYS[1], 'openings') or '0')
-- The first opening lasts exactly the base time; each repeated one doubles it, plus up to 20% jitter
-- so that replicas (and FlickrHub deployments) do not probe in lockstep.
local open_ms = tonumber(ARGV[3]) * (2 ^ openings)
if openings > 0 then open_ms = open_ms * (1 + 0.2 * tonumber(ARGV[5])) end
open_ms = math.floor(math.min(tonumber(ARGV[4]), open_ms))
redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + open_ms, 'openings', openings + 1)
redis.call('HINCRBY', KEYS[1], 'opened_total', 1)
return {'open', open_ms}
"""

# KEYS[1]: breaker hash. Closes the breaker and forgets failures and backoff.
_SUCCESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'closed' end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'openings', 0, 'until', 0)
return 'closed'
"""


@dataclass(frozen=True)
class Decision:
    """May a call go now? `retry_after_ms` says how long an open breaker stays open."""

    state: str
    retry_after_ms: int = 0

    @property
    def allowed(self) -> bool:
        """True for closed and for the single half-open probe."""
        return self.state != OPEN


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and for how long."""

    threshold: int
    open_ms: int
    max_open_ms: int
    probe_lease_ms: int = 30_000


# 3 consecutive 429s pause an API key for 5 minutes, doubling (with jitter) on repeated openings.
KEY_POLICY = BreakerPolicy(threshold=3, open_ms=300_000, max_open_ms=3_600_000)
# A Flickr-wide outage (5xx, timeouts, connection errors in a row) pauses moving for 30 s and up.
FLICKR_POLICY = BreakerPolicy(threshold=10, open_ms=30_000, max_open_ms=600_000)


class Breaker:
    """One named breaker."""

    def __init__(
        self, redis: redisio.Redis, name: str, policy: BreakerPolicy, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.policy = policy
        self._key = keys.breaker(name)
        self._redis = redis
        self._rng = rng or random.Random()
        self._allow = redis.register_script(_ALLOW)
        self._failure = redis.register_script(_FAILURE)
        self._success = redis.register_script(_SUCCESS)

    async def allow(self, now_ms: float | None = None) -> Decision:
        """Whether a call may go now (at most one caller gets a half-open probe)."""
        state, retry = await self._allow(keys=[self._key], args=[_now(now_ms), self.policy.probe_lease_ms])
        return Decision(str(state), int(retry))

    async def failure(self, now_ms: float | None = None) -> Decision:
        """Count a failure; returns the state after it (open with its duration when it opened now)."""
        p = self.policy
        args = [_now(now_ms), p.threshold, p.open_ms, p.max_open_ms, self._rng.random()]
        state, open_ms = await self._failure(keys=[self._key], args=args)
        return Decision(str(state), int(open_ms))

    async def success(self) -> None:
        """Close the breaker and forget its failures."""
        await self._success(keys=[self._key])

    async def redis_time_ms(self) -> int:
        """The Redis clock every replica agrees on, in milliseconds."""
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def snapshot(self) -> dict[str, str]:
        """The raw state (for metrics and the admin view)."""
        raw = await self._redis.hgetall(self._key)
        return {str(k): str(v) for k, v in raw.items()}


def _now(now_ms: float | None) -> float:
    return -1 if now_ms is None else now_ms
