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
from common.groupcommit import Batcher

RATE_LIMITED = Counter(
    "flickrhub_rate_limited_total", "Calls refused by a per-API-key rate limit.", ["class"]
)

WINDOW_MS = 60_000.0

# KEYS: the key's epoch, then the bucket keys. ARGV: the expected epoch, the number of calls n, then
# per bucket its emission interval (ms). The calls are counted in order while every bucket has room;
# returns {allowed, retry_ms, bucket}: the first `allowed` calls pass, the rest wait retry_ms
# (bucket: the KEYS index that refused); allowed = -1 when the epoch moved (nothing counted).
_GCRA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  return {-1, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
local tats, intervals = {}, {}
for i = 2, #KEYS do
  intervals[i] = tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
end
local allowed, retry, refused_by = 0, 0, 0
while allowed < n and refused_by == 0 do
  for i = 2, #KEYS do
    local tolerance = 60000 - intervals[i]
    if tats[i] - now > tolerance then
      retry, refused_by = math.ceil(tats[i] - tolerance - now), i
      break
    end
  end
  if refused_by == 0 then
    for i = 2, #KEYS do tats[i] = tats[i] + intervals[i] end
    allowed = allowed + 1
  end
end
if allowed > 0 then
  for i = 2, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
  end
end
return {allowed, retry, refused_by}
"""

Buckets = tuple[tuple[str, int], ...]  # (bucket name, limit per minute)


@dataclass(frozen=True)
class _Ask:
    key_id: str
    buckets: Buckets
    epoch: int
    method_class: str


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
        # The calls of one event-loop turn share a round trip, and each key's calls one script call.
        self._turn: Batcher[_Ask, Decision] = Batcher(self._check_all)

    async def check(self, key: ApiKeyRecord, method_class: str, epoch: int) -> Decision:
        """Count one call of `method_class` against the key's limits, if `epoch` is still the key's."""
        buckets: list[tuple[str, int]] = [("all", key.rate_limit_per_min or self._default)]
        class_limit = key.class_limits.get(method_class, 0)
        if class_limit:
            buckets.append((method_class, class_limit))
        decision = await self._turn.submit(_Ask(key.key_id, tuple(buckets), epoch, method_class))
        if not decision.allowed and not decision.stale:
            RATE_LIMITED.labels(**{"class": method_class}).inc()
        return decision

    async def _check_all(self, asks: list[_Ask]) -> list[Decision]:
        groups: dict[tuple[str, Buckets, int], list[int]] = {}
        for i, ask in enumerate(asks):
            groups.setdefault((ask.key_id, ask.buckets, ask.epoch), []).append(i)
        pipe = self._redis.pipeline(transaction=False)
        for (key_id, buckets, epoch), members in groups.items():
            names = [keys.api_key_rate(key_id, name) for name, _ in buckets]
            intervals = [f"{WINDOW_MS / limit:.3f}" for _, limit in buckets]
            # EVAL, not EVALSHA: a script Redis forgot (restart, SCRIPT FLUSH) costs nothing to resend.
            pipe.eval(
                _GCRA,
                1 + len(names),
                keys.api_key_epoch(key_id),
                *names,
                str(epoch),
                len(members),
                *intervals,
            )
        out: list[Decision] = [Decision(False)] * len(asks)
        for ((_, buckets, _), members), reply in zip(groups.items(), await pipe.execute(), strict=True):
            allowed, retry_ms, index = (int(v) for v in reply)
            for rank, i in enumerate(members):
                if allowed < 0:
                    out[i] = Decision(False, stale=True)
                elif rank < allowed:
                    out[i] = Decision(True)
                else:
                    out[i] = Decision(False, max(0.001, retry_ms / 1000), buckets[index - 2][0])
        return out
