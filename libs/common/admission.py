"""Backpressure: how many jobs are open (accepted, not yet final), per client and in all.

The count is two sorted sets of job ids scored by acceptance time (ms): one per client
(`keys.client_open_jobs`) and one for everything FlickrHub holds (`keys.OPEN_JOBS`).
Ids, not counters, because every step that touches them can be repeated safely:

- the gateway reserves a submission's ids (one Lua step for all submissions of an event-loop
  turn, or that arrived while the previous step was in flight: count, refuse or add; stale ids
  are trimmed when a cap would refuse) before it writes
  anything, and releases them when the submission fails or is a duplicate;
- whoever makes a job final releases its id: the worker (completed, failed, expired,
  write outcome unknown) and the gateway's CancelJob. A redelivered entry of a job
  already final releases it again, so a worker killed between recording the outcome
  and releasing repairs itself when the entry comes back. ZREM of an absent id is a
  no-op, so nothing is ever released twice; a counter would drift on every repeat.

A turn whose every cap is far away is not counted: while this replica's last count of a set,
plus what it admitted since, plus the turn stays under FAR_SHARE of the cap, and that count is
less than FAR_S old, the script only adds the ids (a ZADD per set instead of a ZCARD and a ZADD).
Releases elsewhere only lower the true count, so the estimate errs high. Another replica's
admissions are what it does not see: to pass a cap through this shortcut, the other replicas
together would have to admit more than (1 - FAR_SHARE) of it within FAR_S.

A single submission far from every cap sends nothing at all (`admit(..., deferrable=True)`): its
id waits in the replica and its group commit's pipeline adds it (`unsent_on`: a ZADD per client and
one for all, per batch) ahead of the job's queue entry, so a worker's release always comes after.
A count read meanwhile misses ids still waiting for their batch (a few milliseconds' worth), which
matters only far below the cap, where nothing is counted anyway. A gateway killed before its batch
went leaves those jobs uncounted (an under-count, as for a job older than the horizon); a
submission refused or found a duplicate before its batch just forgets its id.

What can still leak is a reservation whose job never existed (a gateway killed between
reserving and writing the job) or a release lost for good. A check that would refuse first drops ids
older than the horizon (`Settings.admission_horizon_s`: longer than any job should stay
open), so such an id over-counts for at most that long: transient, never permanent.
A job open longer than the horizon stops counting, an under-count we accept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from redis.asyncio.client import Pipeline

from common import keys, redisio, resp
from common.errors import FlickrHubError, Unavailable
from common.groupcommit import Batcher
from common.settings import Settings

# One step for every submission of an event-loop turn (every admission key shares the {admit} tag).
# KEYS[1]: the global set, KEYS[2..]: client sets. ARGV: client cap, global cap, horizon ms, the
# gateway's clock (ms: scores only age ids out at the horizon, hours away, so a replica's skew does
# not matter), '1' when the caller knows every cap of the turn is far away (nothing is counted,
# everything admitted: see Admission), then per submission: its client's KEYS index, its id count
# n, its n ids. Returns per submission {0, client open after, total open after} when admitted
# (-1, -1 when not counted), {1, client open, total open} or {2, ...} when refused. Stale ids are
# trimmed only when a cap would refuse (they can only matter then), so a counted turn costs a
# ZCARD per set and a ZADD per set, an uncounted one a ZADD per set.
_ADMIT = """
local now = tonumber(ARGV[4])
local stale = now - tonumber(ARGV[3])
local client_cap, total_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local far = ARGV[5] == '1'
local counts, trimmed, adds, out = {}, false, {}, {}
local function count(k)
  if far then return -1 end
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
local i = 6
while i <= #ARGV do
  local k, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if count(k) + n > client_cap or count(1) + n > total_cap then trim(k) end
  if count(k) + n > client_cap then
    out[#out + 1] = {1, counts[k], count(1)}
  elseif count(1) + n > total_cap then
    out[#out + 1] = {2, counts[k], counts[1]}
  else
    if not far then
      counts[k] = counts[k] + n
      counts[1] = counts[1] + n
    end
    adds[k] = adds[k] or {}
    for j = i + 2, i + 1 + n do
      adds[k][#adds[k] + 1] = now
      adds[k][#adds[k] + 1] = ARGV[j]
    end
    out[#out + 1] = {0, count(k), count(1)}
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

# A turn is not counted while every set it touches is known to be under this share of its cap...
FAR_SHARE = 0.5
# ...by a count read at most this long ago (seconds).
FAR_S = 1.0
# Counts of at most this many clients are remembered (then all are forgotten: each costs one count).
KNOWN_MAX = 10_000

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
        # Submissions of one event-loop turn share one script call (common.groupcommit), and so do
        # those that arrive while a call is in flight: grpc.aio hands each call its own loop turn, so
        # under load a turn held one submission (two ZADDs and an EVAL per job); one call in flight
        # lets the batch grow with Redis's latency instead, and a lone submission still goes at once.
        self._turn: Batcher[tuple[str, Sequence[str]], tuple[int, int]] = Batcher(
            self._admit_all, max_in_flight=1
        )
        # The last count read of each set (KEYS name -> (open ids, when read)), plus what this replica
        # admitted since: what tells a turn it may skip counting.
        self._known: dict[str, tuple[int, float]] = {}
        self._releases: Batcher[tuple[str, Sequence[str]], None] = Batcher(self._release_all)
        # Deferred admissions (job id -> (client id, score)) waiting for their commit's pipeline.
        self._unsent: dict[str, tuple[str, int]] = {}

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

    async def admit(self, client_id: str, job_ids: Sequence[str], *, deferrable: bool = False) -> None:
        """Count `job_ids` as open for `client_id`, all or none (one round trip); raise when a cap says no.

        ClientOverloaded (RESOURCE_EXHAUSTED) when the client would pass its cap, BufferFull
        (UNAVAILABLE) when FlickrHub as a whole would; either way nothing was added.

        `deferrable`: the caller's jobs are enqueued by a pipeline that calls `unsent_on` before
        their entries (the gateway's group commit). Far from every cap, nothing is sent now: the
        ids wait for that pipeline, which adds them ahead of the entries, so no worker can release
        an id before it was added.
        """
        if not job_ids:
            return
        if deferrable and self.defer(client_id, job_ids):
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
        adding = [0]  # ids this turn adds to each set, by KEYS position - 1
        submissions: list[str | int] = []
        for client_id, job_ids in asks:
            if client_id not in index:
                sets.append(keys.client_open_jobs(client_id))
                index[client_id] = len(sets)  # Lua's KEYS are 1-based
                adding.append(0)
            adding[0] += len(job_ids)
            adding[index[client_id] - 1] += len(job_ids)
            submissions += [index[client_id], len(job_ids), *job_ids]
        now = time.monotonic()
        far = self._far(sets, adding, now)
        if far:  # counted in the estimates before the step is sent: turns in flight at once see each other
            self._estimate(sets, adding)
        args = [self.client_cap, self.total_cap, self._horizon_ms, int(time.time() * 1000), int(far)]
        # EVAL, not EVALSHA: a script Redis forgot (restart, SCRIPT FLUSH) costs nothing to resend.
        if self._wire is None:
            result = await self._redis.eval(_ADMIT, len(sets), *sets, *args, *submissions)
        else:
            (result,) = await self._wire.execute([("EVAL", _ADMIT, len(sets), *sets, *args, *submissions)])
            if isinstance(result, Exception):
                raise result
        verdicts = [(int(verdict), int(client), int(total)) for verdict, client, total in result]
        self._learn(sets, asks, index, verdicts, far, now)
        return [(verdict, client if verdict != 2 else total) for verdict, client, total in verdicts]

    def defer(self, client_id: str, job_ids: Sequence[str]) -> bool:
        """Admit `job_ids` without Redis when every cap is far away (see `admit`); whether it did.

        `admit(..., deferrable=True)` without a coroutine: the gateway's SubmitJob asks this first
        and awaits `admit` only when it says no.
        """
        sets = [keys.OPEN_JOBS, keys.client_open_jobs(client_id)]
        adding = [len(job_ids), len(job_ids)]
        now = time.monotonic()
        if not self._far(sets, adding, now):
            return False
        self._estimate(sets, adding)
        score = int(time.time() * 1000)
        for job_id in job_ids:
            self._unsent[job_id] = (client_id, score)
        return True

    def unsent_on(self, pipe: Pipeline, job_ids: Iterable[str]) -> None:
        """Queue the ZADDs of the deferred admissions among `job_ids` on `pipe` (before their entries)."""
        by_client: dict[str, dict[str, int]] = {}
        for job_id in job_ids:
            unsent = self._unsent.pop(job_id, None)
            if unsent is not None:
                by_client.setdefault(unsent[0], {})[job_id] = unsent[1]
        if not by_client:
            return
        every: dict[str, int] = {}
        for client_id, ids in by_client.items():
            pipe.zadd(keys.client_open_jobs(client_id), ids)
            every.update(ids)
        pipe.zadd(keys.OPEN_JOBS, every)

    def _estimate(self, sets: list[str], adding: list[int]) -> None:
        """Add what an uncounted turn admits to the known counts of its sets (their read time kept)."""
        for name, n in zip(sets, adding, strict=True):
            count, read_at = self._known[name]
            self._known[name] = (count + n, read_at)

    def _far(self, sets: list[str], adding: list[int], now: float) -> bool:
        """Whether every set of the turn is known to stay under FAR_SHARE of its cap with it."""
        for i, name in enumerate(sets):
            known = self._known.get(name)
            cap = self.total_cap if i == 0 else self.client_cap
            if known is None or now - known[1] > FAR_S or known[0] + adding[i] > cap * FAR_SHARE:
                return False
        return True

    def _learn(
        self,
        sets: list[str],
        asks: list[tuple[str, Sequence[str]]],
        index: dict[str, int],
        verdicts: list[tuple[int, int, int]],
        far: bool,
        now: float,
    ) -> None:
        """Keep the counts a counted turn read (an uncounted one was added to the estimates already)."""
        if far:
            return
        if len(self._known) > KNOWN_MAX:
            self._known.clear()
        for (client_id, _), (_, client, total) in zip(asks, verdicts, strict=True):
            # In the turn's order: the last submission of a set leaves its count after the turn.
            self._known[sets[index[client_id] - 1]] = (client, now)
            self._known[sets[0]] = (total, now)

    async def release(self, client_id: str, job_ids: Sequence[str]) -> None:
        """Stop counting `job_ids` (final, cancelled or never accepted); repeating it is harmless.

        An empty `client_id` (an entry queued before entries named their client) releases only
        the global count; the client's id then ages out at the horizon.
        """
        if not job_ids:
            return
        sent = [job_id for job_id in job_ids if self._unsent.pop(job_id, None) is None]
        if sent:  # a deferred id never reached Redis: nothing to take back
            await self._releases.submit((client_id, sent))

    async def _release_all(self, asks: list[tuple[str, Sequence[str]]]) -> list[None]:
        """One round trip releasing every id of a turn: a ZREM per client and one for the total."""
        pipe = self._redis.pipeline(transaction=False)
        release_on(pipe, asks)
        for reply in await resp.run(pipe, self._wire):
            if isinstance(reply, Exception):
                raise reply
        return [None] * len(asks)

    async def open_jobs(self, client_id: str | None = None) -> int:
        """How many ids are counted for `client_id` (or in all) right now, stale ones included."""
        key = keys.OPEN_JOBS if client_id is None else keys.client_open_jobs(client_id)
        return int(await self._redis.zcard(key))


def release_on(pipe: Pipeline, asks: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Queue `Admission.release` of every (client id, job ids) on `pipe`: a ZREM per client, one for all."""
    by_client: dict[str, list[str]] = {}
    for client_id, job_ids in asks:
        by_client.setdefault(client_id, []).extend(job_ids)
    for client_id, job_ids in by_client.items():
        if client_id:
            pipe.zrem(keys.client_open_jobs(client_id), *job_ids)
    pipe.zrem(keys.OPEN_JOBS, *[job_id for ids in by_client.values() for job_id in ids])
