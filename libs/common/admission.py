"""Backpressure: how many jobs are open (accepted, not yet final), per client and in all.

The count is two sorted sets of job ids scored by acceptance time (ms): one per client
(`keys.client_open_jobs`) and one for everything FlickrHub holds (`keys.OPEN_JOBS`).
Ids, not counters, because every step that touches them can be repeated safely:

- the gateway reserves a submission's ids (one Lua step: trim, count, refuse or add)
  before it writes anything, and releases them when the submission fails or is a
  duplicate;
- whoever makes a job final releases its id: the worker (completed, failed, expired,
  write outcome unknown) and the gateway's CancelJob. A redelivered entry of a job
  already final releases it again, so a worker killed between recording the outcome
  and releasing repairs itself when the entry comes back. ZREM of an absent id is a
  no-op, so nothing is ever released twice; a counter would drift on every repeat.

What can still leak is a reservation whose job never existed (a gateway killed between
reserving and writing the job) or a release lost for good. Every check first drops ids
older than the horizon (`Settings.admission_horizon_s`: longer than any job should stay
open), so such an id over-counts for at most that long: transient, never permanent.
A job open longer than the horizon stops counting, an under-count we accept.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from common import keys, redisio
from common.errors import FlickrHubError, Unavailable
from common.settings import Settings

# KEYS: the client's set, the global set. ARGV: client cap, global cap, horizon ms, job ids…
# Returns {0, open after} when admitted, {1, client open} or {2, total open} when refused.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = now - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', stale)
local n = #ARGV - 3
local mine = redis.call('ZCARD', KEYS[1])
if mine + n > tonumber(ARGV[1]) then return {1, mine} end
local total = redis.call('ZCARD', KEYS[2])
if total + n > tonumber(ARGV[2]) then return {2, total} end
local members = {}
for i = 4, #ARGV do
  members[#members + 1] = now
  members[#members + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[1], unpack(members))
redis.call('ZADD', KEYS[2], unpack(members))
return {0, mine + n}
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
        client_cap: int,
        total_cap: int,
        horizon_s: float,
        retry_after_s: float,
    ) -> None:
        self._redis = redis
        self.client_cap = client_cap
        self.total_cap = total_cap
        self._horizon_ms = int(horizon_s * 1000)
        self._retry_after_s = retry_after_s
        self._admit = redis.register_script(_ADMIT)

    @classmethod
    def from_settings(cls, redis: redisio.Redis, settings: Settings) -> Admission:
        """The caps and horizon the settings name."""
        return cls(
            redis,
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
        result = await self._admit(
            keys=[keys.client_open_jobs(client_id), keys.OPEN_JOBS],
            args=[self.client_cap, self.total_cap, self._horizon_ms, *job_ids],
        )
        verdict, count = int(result[0]), int(result[1])
        if verdict == 1:
            raise ClientOverloaded(client_id, count, self.client_cap, self._retry_after_s)
        if verdict == 2:
            raise BufferFull(count, self.total_cap, self._retry_after_s)

    async def release(self, client_id: str, job_ids: Sequence[str]) -> None:
        """Stop counting `job_ids` (final, cancelled or never accepted); repeating it is harmless.

        An empty `client_id` (an entry queued before entries named their client) releases only
        the global count; the client's id then ages out at the horizon.
        """
        if not job_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        if client_id:
            pipe.zrem(keys.client_open_jobs(client_id), *job_ids)
        pipe.zrem(keys.OPEN_JOBS, *job_ids)
        await pipe.execute()

    async def open_jobs(self, client_id: str | None = None) -> int:
        """How many ids are counted for `client_id` (or in all) right now, stale ones included."""
        key = keys.OPEN_JOBS if client_id is None else keys.client_open_jobs(client_id)
        return int(await self._redis.zcard(key))
