"""Backpressure: how many jobs are open (accepted, not yet final), per client and in all.

The count is two sorted sets of job ids scored by acceptance time (ms): one per client
(`keys.client_open_jobs`) and one for everything FlickrHub holds (`keys.OPEN_JOBS`).
Ids, not counters, because every step that touches them can be repeated safely:

- the gateway reserves a submission's ids (one Lua step for all submissions of an event-loop
  turn: count, refuse or add; stale ids are trimmed when a cap would refuse) before it writes
  anything, and releases them when the submission fails or is a duplicate;
- whoever makes a job final releases its id: the worker (completed, failed, expired,
  write outcome unknown) and the gateway's CancelJob. A redelivered entry of a job
  already final releases it again, so a worker killed between recording the outcome
  and releasing repairs itself when the entry comes back. ZREM of an absent id is a
  no-op, so nothing is ever released twice; a counter would drift on every repeat.

What can still leak is a reservation whose job never existed (a gateway killed between
reserving and writing the job) or a release lost for good. A check that would refuse first drops ids
older than the horizon (`Settings.admission_horizon_s`: longer than any job should stay
open), so such an id over-counts for at most that long: transient, never permanent.
A job open longer than the horizon stops counting, an under-count we accept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from common import keys, redisio, resp
from common.errors import FlickrHubError, Unavailable
from common.groupcommit import Batcher
from common.settings import Settings

# One step for every submission of an event-loop turn (every admission key shares the {admit} tag).
# KEYS[1]: the global set, KEYS[2..]: client sets. ARGV: client cap, global cap, horizon ms, the
# gateway's clock (ms: scores only age ids out at the horizon, hours away, so a replica's skew does
# not matter), then per submission: its client's KEYS index, its id count n, its n ids. Returns per
# submission {0, open after} when admitted, {1, client open} or {2, total open} when refused. Stale
# ids are trimmed only when a cap would refuse (they can only matter then), so the usual turn costs
# a ZCARD per set and a ZADD per set.
_ADMIT = """
local now = tonumber(ARGV[4])
local stale = now - tonumber(ARGV[3])
local client_cap, total_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local counts, trimmed, adds, out = {}, false, {}, {}
local function count(k)
  if counts[k] == nil then counts[k] = redis.call('ZCARD', KEYS[k]) end
  return counts[k]
end
local function trim(k)
  if not trimmed then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale)
    counts[1] = redis.call('ZCARD', KEYS[1])
    trimmed = {}
  end
  if k ~= 1 and not trimmed[k] then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', stale)
    counts[k] = redis.call('ZCARD', KEYS[k])
    trimmed[k] = true
  end
end
local i = 5
while i <= #ARGV do
  local k, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if count(k) + n > client_cap or count(1) + n > total_cap then trim(k) end
  if count(k) + n > client_cap then
    out[#out + 1] = {1, counts[k]}
  elseif count(1) + n > total_cap then
    out[#out + 1] = {2, counts[1]}
  else
    counts[k] = counts[k] + n
    counts[1] = counts[1] + n
    adds[k] = adds[k] or {}
    for j = i + 2, i + 1 + n do
      adds[k][#adds[k] + 1] = now
      adds[k][#adds[k] + 1] = ARGV[j]
    end
    out[#out + 1] = {0, counts[k]}
  end
  i = i + 2 + n
end
local function zadd(key, members)
  for from = 1, #members, 1000 do
    redis.call('ZADD', key, unpack(members, from, math.min(from + 999, #members)))
  end
end
local all = {}
for k, members in pairs(adds) do
  zadd(KEYS[k], members)
  for _, v in ipairs(members) do all[#all + 1] = v end
end
if #all > 0 then zadd(KEYS[1], all) end
return out
"""

CLIENT = "client_pending"
BUFFER = "buffer_full"


class ClientOverloaded(FlickrHubError):
    """The client already has its cap of open jobs: RetryInfo says when to try again."""

    def __init__(self, client_id: str, open_jobs: int, cap: int, retry_after_s: float) -> None:
        super().__init__(
            f"client {client_id} has {open_jobs} pending jobs (at most {cap}); retry once some finish",
            "CLIENT_PENDING_JOBS_EXCEEDED",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            retryable=True,
            retry_after_s=retry_after_s,
            metadata={"client_id": client_id, "pending": str(open_jobs), "limit": str(cap)},
        )
        self.client_id = client_id

    def to_status(self) -> status_pb2.Status:
        """The base status plus a QuotaFailure naming the client's pending-jobs quota."""
        status = super().to_status()
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"client:{self.client_id}", description="pending (not yet final) jobs"
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(quota)
        status.details.append(packed)
        return status


class BufferFull(Unavailable):
    """FlickrHub holds as many open jobs as it may: come back later."""

    def __init__(self, open_jobs: int, cap: int, retry_after_s: float) -> None:
        super().__init__(
            f"FlickrHub's queue is full ({open_jobs} open jobs, at most {cap}); retry later",
            retry_after_s=retry_after_s,
            reason="QUEUE_FULL",
        )


class Admission:
    """Reserves and releases open-job ids on the queue Redis."""

    def __init__(
        self,
        redis: redisio.Redis,
        *,
        wire: resp.Multiplexed | None = None,
        client_cap: int,
        total_cap: int,
        horizon_s: float,
        retry_after_s: float,
    ) -> None:
        self._redis = redis
        self._wire = wire  # the lean connection for the per-turn steps, when the service has one
        self.client_cap = client_cap
        self.total_cap = total_cap
        self._horizon_ms = int(horizon_s * 1000)
        self._retry_after_s = retry_after_s
        # Submissions of one event-loop turn share one script call (common.groupcommit).
        self._turn: Batcher[tuple[str, Sequence[str]], tuple[int, int]] = Batcher(self._admit_all)
        self._releases: Batcher[tuple[str, Sequence[str]], None] = Batcher(self._release_all)

    @classmethod
    def from_settings(
        cls, redis: redisio.Redis, settings: Settings, wire: resp.Multiplexed | None = None
    ) -> Admission:
        """The caps and horizon the settings name."""
        return cls(
            redis,
            wire=wire,
            client_cap=settings.client_max_pending_jobs,
            total_cap=settings.max_buffered_jobs,
            horizon_s=settings.admission_horizon_s,
            retry_after_s=settings.backpressure_retry_after_s,
        )

    async def admit(self, client_id: str, job_ids: Sequence[str]) -> None:
        """Count `job_ids` as open for `client_id`, all or none (one round trip); raise when a cap says no.

        ClientOverloaded (RESOURCE_EXHAUSTED) when the client would pass its cap, BufferFull
        (UNAVAILABLE) when FlickrHub as a whole would; either way nothing was added.
        """
        if not job_ids:
            return
        verdict, count = await self._turn.submit((client_id, job_ids))
        if verdict == 1:
            raise ClientOverloaded(client_id, count, self.client_cap, self._retry_after_s)
        if verdict == 2:
            raise BufferFull(count, self.total_cap, self._retry_after_s)

    async def _admit_all(self, asks: list[tuple[str, Sequence[str]]]) -> list[tuple[int, int]]:
        """One script call deciding every submission of a turn, in order."""
        sets = [keys.OPEN_JOBS]
        index: dict[str, int] = {}
        args: list[str | int] = [self.client_cap, self.total_cap, self._horizon_ms, int(time.time() * 1000)]
        for client_id, job_ids in asks:
            if client_id not in index:
                sets.append(keys.client_open_jobs(client_id))
                index[client_id] = len(sets)  # Lua's KEYS are 1-based
            args += [index[client_id], len(job_ids), *job_ids]
        # EVAL, not EVALSHA: a script Redis forgot (restart, SCRIPT FLUSH) costs nothing to resend.
        if self._wire is None:
            result = await self._redis.eval(_ADMIT, len(sets), *sets, *args)
        else:
            (result,) = await self._wire.execute([("EVAL", _ADMIT, len(sets), *sets, *args)])
            if isinstance(result, Exception):
                raise result
        return [(int(verdict), int(count)) for verdict, count in result]

    async def release(self, client_id: str, job_ids: Sequence[str]) -> None:
        """Stop counting `job_ids` (final, cancelled or never accepted); repeating it is harmless.

        An empty `client_id` (an entry queued before entries named their client) releases only
        the global count; the client's id then ages out at the horizon.
        """
        if not job_ids:
            return
        await self._releases.submit((client_id, job_ids))

    async def _release_all(self, asks: list[tuple[str, Sequence[str]]]) -> list[None]:
        """One round trip releasing every id of a turn: a ZREM per client and one for the total."""
        by_client: dict[str, list[str]] = {}
        for client_id, job_ids in asks:
            by_client.setdefault(client_id, []).extend(job_ids)
        pipe = self._redis.pipeline(transaction=False)
        for client_id, job_ids in by_client.items():
            if client_id:
                pipe.zrem(keys.client_open_jobs(client_id), *job_ids)
        pipe.zrem(keys.OPEN_JOBS, *[job_id for ids in by_client.values() for job_id in ids])
        for reply in await resp.run(pipe, self._wire):
            if isinstance(reply, Exception):
                raise reply
        return [None] * len(asks)

    async def open_jobs(self, client_id: str | None = None) -> int:
        """How many ids are counted for `client_id` (or in all) right now, stale ones included."""
        key = keys.OPEN_JOBS if client_id is None else keys.client_open_jobs(client_id)
        return int(await self._redis.zcard(key))
