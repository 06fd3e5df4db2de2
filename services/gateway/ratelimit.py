"""Per-API-key rate limits: GCRA over one or two buckets (all calls; the call's class) in one Lua step.

Each bucket holds its theoretical arrival time (ms). A limit of L per minute has an
emission interval T = 60000/L ms and lets a full minute's worth arrive at once
(burst L). Both buckets are checked and updated in one script, so a refusal by
either changes neither; the keys share the API key's hash tag (keys.api_key_rate).

The same step checks the key's epoch (keys.api_key_epoch) against the one the
caller's cached authentication was made under: when a rotation or revocation has
bumped it, nothing is counted and the caller re-authenticates. Freshness on every
replica thus costs no extra round trip.

A busy key does not pay that step per call: each step may take a few calls more than
its callers need (about twice what the replica passed on its previous lease, at most
EPOCH_LEASE_S worth of the key's tightest limit), and the replica passes later calls
on that lease without asking Redis until it is spent or EPOCH_LEASE_S (counted from
before the step was sent) has passed. A quiet key, or one whose limit allows less than
one call per EPOCH_LEASE_S, is checked call by call as before. Rotation and revocation
wait EPOCH_LEASE_S after bumping the epoch (common.apikeys), so a lease never outlives
the epoch it was granted under. Calls leased and not used are not given back: at most one
lease's worth per replica and lease (≤ EPOCH_LEASE_S of the limit) is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Counter

from common import keys, redisio
from common.apikeys import EPOCH_LEASE_S, ApiKeyRecord
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


@dataclass
class _Lease:
    """Calls of one key (and bucket set) this replica may still pass without asking Redis."""

    epoch: int
    left: int = 0
    until: float = 0.0  # time.monotonic() deadline
    used: int = 0  # calls passed on it (sizes the next one)


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one call."""

    allowed: bool
    retry_after_s: float = 0.0
    bucket: str = ""
    stale: bool = False  # the key's epoch moved: re-authenticate, nothing was counted


class RateLimiter:
    """GCRA buckets per key on the queue Redis."""

    def __init__(self, redis: redisio.Redis, default_per_min: int, lease_s: float = EPOCH_LEASE_S) -> None:
        self._redis = redis
        self._default = default_per_min
        self._lease_s = lease_s
        self._leases: dict[tuple[str, Buckets], _Lease] = {}
        # The calls of one event-loop turn share a round trip, and each key's calls one script call.
        self._turn: Batcher[_Ask, Decision] = Batcher(self._check_all)

    async def check(self, key: ApiKeyRecord, method_class: str, epoch: int) -> Decision:
        """Count one call of `method_class` against the key's limits, if `epoch` is still the key's."""
        buckets: list[tuple[str, int]] = [("all", key.rate_limit_per_min or self._default)]
        class_limit = key.class_limits.get(method_class, 0)
        if class_limit:
            buckets.append((method_class, class_limit))
        lease = self._leases.get((key.key_id, tuple(buckets)))
        if lease is not None and lease.left > 0 and lease.epoch == epoch and time.monotonic() < lease.until:
            lease.left -= 1
            lease.used += 1
            return Decision(True)
        decision = await self._turn.submit(_Ask(key.key_id, tuple(buckets), epoch, method_class))
        if not decision.allowed and not decision.stale:
            RATE_LIMITED.labels(**{"class": method_class}).inc()
        return decision

    def _extra(self, lease: _Lease | None, buckets: Buckets, asked: int) -> int:
        """Calls to take beyond `asked`: twice the recent demand, at most a lease's worth of the limit."""
        most = int(min(limit for _, limit in buckets) * self._lease_s / 60)
        return min(most, 2 * (asked + (lease.used if lease is not None else 0)))

    async def _check_all(self, asks: list[_Ask]) -> list[Decision]:
        groups: dict[tuple[str, Buckets, int], list[int]] = {}
        for i, ask in enumerate(asks):
            groups.setdefault((ask.key_id, ask.buckets, ask.epoch), []).append(i)
        pipe = self._redis.pipeline(transaction=False)
        wanted: list[int] = []
        for key_id, buckets, epoch in groups:
            names = [keys.api_key_rate(key_id, name) for name, _ in buckets]
            intervals = [f"{WINDOW_MS / limit:.3f}" for _, limit in buckets]
            asked = len(groups[key_id, buckets, epoch])
            wanted.append(asked + self._extra(self._leases.get((key_id, buckets)), buckets, asked))
            # EVAL, not EVALSHA: a script Redis forgot (restart, SCRIPT FLUSH) costs nothing to resend.
            pipe.eval(
                _GCRA,
                1 + len(names),
                keys.api_key_epoch(key_id),
                *names,
                str(epoch),
                wanted[-1],
                *intervals,
            )
        sent = time.monotonic()
        replies = await pipe.execute()
        if len(self._leases) > 4096:
            self._leases = {k: v for k, v in self._leases.items() if v.left > 0 and v.until > sent}
        out: list[Decision] = [Decision(False)] * len(asks)
        for ((key_id, buckets, epoch), members), reply in zip(groups.items(), replies, strict=True):
            allowed, retry_ms, index = (int(v) for v in reply)
            if allowed < 0:  # the epoch moved: whatever this replica still holds of the key is void
                self._leases.pop((key_id, buckets), None)
            else:
                self._lease(key_id, buckets, epoch, max(0, allowed - len(members)), sent)
            for rank, i in enumerate(members):
                if allowed < 0:
                    out[i] = Decision(False, stale=True)
                elif rank < allowed:
                    out[i] = Decision(True)
                else:
                    out[i] = Decision(False, max(0.001, retry_ms / 1000), buckets[index - 2][0])
        return out

    def _lease(self, key_id: str, buckets: Buckets, epoch: int, surplus: int, sent: float) -> None:
        """Keep the calls granted beyond the asks: valid until `lease_s` after the step was sent.

        What is left of an older lease of the same epoch joins it: the step just checked that epoch.
        """
        old = self._leases.get((key_id, buckets))
        if surplus <= 0 and old is None:
            return
        left = surplus + (old.left if old is not None and old.epoch == epoch and old.until > sent else 0)
        self._leases[key_id, buckets] = _Lease(epoch, left, sent + self._lease_s)
