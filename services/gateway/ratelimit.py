"""Per-API-key rate limits: GCRA over one or two buckets (all calls; the call's class) in one Lua step.

Each bucket holds its theoretical arrival time (ms). A limit of L per minute has an
emission interval T = 60000/L ms and lets a full minute's worth arrive at once
(burst L). Both buckets are checked and updated in one script, so a refusal by
either changes neither; the keys share the API key's hash tag (keys.api_key_rate).

The same step checks the key's epoch (keys.api_key_epoch) against the one the
caller's cached authentication was made under: when a rotation or revocation has
bumped it, nothing is counted and the caller re-authenticates. Freshness on every
replica thus costs no extra round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from common import keys, redisio
from common.apikeys import ApiKeyRecord

RATE_LIMITED = Counter(
    "flickrhub_rate_limited_total", "Calls refused by a per-API-key rate limit.", ["class"]
)

WINDOW_MS = 60_000.0

# KEYS: the key's epoch, then the bucket keys. ARGV: the expected epoch, then per bucket its emission
# interval (ms). Returns {allowed, retry_ms, bucket}; allowed = -1 when the epoch moved (nothing counted).
_GCRA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  return {-1, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tats = {}
for i = 2, #KEYS do
  local interval = tonumber(ARGV[i])
  local tolerance = 60000 - interval
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if tat - now > tolerance then
    return {0, math.ceil(tat - tolerance - now), i}
  end
  tats[i] = tat + interval
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
end
return {1, 0, 0}
"""


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one call."""

    allowed: bool
    retry_after_s: float = 0.0
    bucket: str = ""
    stale: bool = False  # the key's epoch moved: re-authenticate, nothing was counted


class RateLimiter:
    """GCRA buckets per key on the queue Redis."""

    def __init__(self, redis: redisio.Redis, default_per_min: int) -> None:
        self._redis = redis
        self._default = default_per_min
        self._script = redis.register_script(_GCRA)

    async def check(self, key: ApiKeyRecord, method_class: str, epoch: int) -> Decision:
        """Count one call of `method_class` against the key's limits, if `epoch` is still the key's."""
        buckets = [("all", key.rate_limit_per_min or self._default)]
        class_limit = key.class_limits.get(method_class, 0)
        if class_limit:
            buckets.append((method_class, class_limit))
        names = [keys.api_key_rate(key.key_id, name) for name, _ in buckets]
        intervals = [f"{WINDOW_MS / limit:.3f}" for _, limit in buckets]
        allowed, retry_ms, index = await self._script(
            keys=[keys.api_key_epoch(key.key_id), *names], args=[str(epoch), *intervals]
        )
        if int(allowed) < 0:
            return Decision(False, stale=True)
        if int(allowed):
            return Decision(True)
        RATE_LIMITED.labels(**{"class": method_class}).inc()
        return Decision(False, max(0.001, int(retry_ms) / 1000), buckets[int(index) - 2][0])
