"""Moving jobs from per-token queues into the work streams of their targets.

Each round asks how much may move (breakers, room in the work streams, the Flickr
budget), lets the fair scheduler (mover.scheduler) share that out over clients,
their tokens and each token's priority streams, and moves what it read: append to
the work stream, then acknowledge and delete in the token stream. A mover killed
between the two leaves the entries pending in its consumer's PEL; another mover
claims them (XAUTOCLAIM) and moves them again, and the worker's guarded claim in
MongoDB turns the duplicate into a no-op.

The work streams are kept shallow (MOVER_WORK_BACKLOG undelivered entries): what
waits, waits in the token queues, where the scheduler still orders it. A work
stream filled with one token's flood would put every later job behind the flood.
For the same reason one token may have at most MOVER_TOKEN_IN_FLIGHT entries in the
work streams at once, waiting or running: the mover records each entry it moves in
the token's in-flight set and the worker removes it when it acknowledges the entry.
A member whose worker died before removing it stops counting after the workers'
visibility timeout, so a lost removal can tighten the cap for a while, never for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace
from redis.exceptions import RedisError

from common import keys, redisio, telemetry, tokenqueue
from common.breaker import PROBE
from common.flickr_guard import FlickrGuard
from common.jobs import JobEntry
from common.settings import Settings
from mover import metrics
from mover.scheduler import FairScheduler, TokenQueue

log = logging.getLogger(__name__)

Read = tuple[str, str, dict[str, str]]  # (token stream, entry id, fields)
Plan = dict[tuple[str, str], int]  # (token, priority) -> entries to read
PIPELINE_CHUNK = 200
DELAYED_PUMP_S = 0.25
GAUGES_S = 5.0
# How soon to look again when the work streams are full (workers free room within milliseconds).
WORK_FULL_WAIT_S = 0.005

# Take the lease if free, or renew it if we hold it: the holder keeps pumping, others wait for expiry.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Leave the active set only while every priority stream of the token is empty (the gateway appends,
# then adds). KEYS: the token's streams, then the active set, then the token → client hash.
# KEYS: active set, draining zset. ARGV: token, now ms. Step one of taking a token out: it is
# marked draining in the same step, so a mover killed before step two leaves a trace.
_BEGIN_DRAIN = """
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
"""
# KEYS: active set, draining zset, token-client hash. ARGV: token, 1 if its queues hold entries.
# Step two: back into the active set, or gone (its client too, unless the gateway re-added it).
_END_DRAIN = """
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then return redis.call('SADD', KEYS[1], ARGV[1]) end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then redis.call('HDEL', KEYS[3], ARGV[1]) end
return 0
"""
# A token draining this long was left by a mover that died between the two steps.
DRAIN_ABANDONED_S = 2.0


class Mover:
    """One mover replica; several may run at once."""

    def __init__(self, settings: Settings, redis: redisio.Redis, consumer: str) -> None:
        self._settings = settings
        self._redis = redis
        self.consumer = consumer
        self.scheduler = FairScheduler(
            settings.client_weights,
            settings.priority_weights,
            token_cap=settings.mover_batch,
            in_flight_cap=settings.mover_token_in_flight,
        )
        # Older than this, an in-flight member is taken for a removal that never came (see the module doc).
        self._in_flight_horizon_ms = int(settings.worker_visibility_timeout_s * 1000)
        self._stopping = asyncio.Event()
        self._last_claim = 0.0
        self._last_pump = 0.0
        self._last_gauges = 0.0
        self._lease = redis.register_script(_LEASE)
        self._guard = FlickrGuard(redis, settings)
        self.wait_s = 0.0

    def stop(self) -> None:
        """Finish the current round, then return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        """Move until stopped, backing off gently while idle or while Redis is down."""
        idle = 0.005
        while not self._stopping.is_set():
            try:
                moved = await self.run_round()
            except RedisError as exc:
                log.warning("redis error in mover round: %s", type(exc).__name__)
                moved = 0
                idle = 0.5
            if moved:
                idle = 0.005
                continue
            # Paused by a breaker, out of budget or the work streams full: wait as long as it said.
            pause, self.wait_s = self.wait_s or idle, 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=pause)
            idle = min(idle * 2, 0.05)

    async def run_round(self) -> int:
        """One pass over the active tokens, plus due retries and claims when their time has come."""
        started = time.perf_counter()
        moved = 0
        now = time.monotonic()
        if now - self._last_pump >= DELAYED_PUMP_S:
            self._last_pump = now
            await self.pump_delayed()
            await self.repair_draining()
        if now - self._last_gauges >= GAUGES_S:
            self._last_gauges = now
            await self.export_depths()
        claim = now - self._last_claim >= self._settings.mover_claim_idle_s / 2
        room = await self.work_room()
        if room <= 0:
            metrics.WORK_FULL.inc()
            self.wait_s = WORK_FULL_WAIT_S
            if not claim:
                return 0
        tokens = sorted(str(t) for t in await self._redis.smembers(keys.ACTIVE_TOKENS))
        metrics.ACTIVE_TOKENS.set(len(tokens))
        if not tokens:
            return 0
        plan = await self._plan(tokens, room) if room > 0 else {}
        if not plan and not claim:
            return 0
        if claim:
            self._last_claim = now
        for chunk in _chunks(tokens, PIPELINE_CHUNK):
            reads, empty = await self._read(chunk, plan)
            if claim:
                reads += await self._claim(chunk)
            moved += await self.move(reads)
            await self._deactivate(empty)
        metrics.ROUND_SECONDS.observe(time.perf_counter() - started)
        return moved

    async def _plan(self, tokens: list[str], room: int) -> Plan:
        """How many entries each (token, priority) stream may move this round.

        Breakers first, then the Flickr budget for what the room left in the work streams allows;
        the fair scheduler shares the grant out, so a flood on one token cannot take a small
        token's share.
        """
        queues = await self._queues(tokens)
        await self._deactivate([q.token for q in queues if q.total == 0])
        demand = self.scheduler.demand(queues)
        if demand <= 0:
            if any(q.total for q in queues):
                # Every queued token has its in-flight cap in the work streams: workers free slots soon.
                metrics.IN_FLIGHT_FULL.inc()
                self.wait_s = WORK_FULL_WAIT_S
            return {}
        decision = await self._guard.may_move()
        metrics.PAUSED.set(0 if decision.allowed else 1)
        if not decision.allowed:
            self.wait_s = min(1.0, decision.retry_after_ms / 1000)
            return {}
        wanted = 1 if decision.state == PROBE else min(room, demand)
        grant = await self._guard.budget.take(wanted)
        if grant.granted == 0:
            metrics.BUDGET_WAITS.inc()
            self.wait_s = min(1.0, max(0.005, grant.wait_ms / 1000))
            return {}
        return self.scheduler.plan(queues, grant.granted)

    async def work_room(self) -> int:
        """How many more entries the work streams take before MOVER_WORK_BACKLOG wait undelivered.

        Workers acknowledge and delete what they finish, so a stream's length less its pending
        (delivered, unfinished) entries is what waits for a worker.
        """
        pipe = self._redis.pipeline(transaction=False)
        for target in keys.TARGETS:
            pipe.xlen(keys.work_stream(target))
            pipe.xpending(keys.work_stream(target), keys.WORKER_GROUP)
        results = await pipe.execute(raise_on_error=False)
        waiting = 0
        for length, pending in zip(results[::2], results[1::2], strict=True):
            if isinstance(length, Exception):
                raise length
            # NOGROUP: no worker has started yet, so nothing was delivered.
            delivered = 0 if isinstance(pending, Exception) else int(pending["pending"])
            waiting += max(0, int(length) - delivered)
        return self._settings.mover_work_backlog - waiting

    async def _queues(self, tokens: list[str]) -> list[TokenQueue]:
        """Each token's depth per priority, entries in flight and client, in one round trip."""
        since = int(time.time() * 1000) - self._in_flight_horizon_ms
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.TOKEN_CLIENTS, tokens)
        for token in tokens:
            for stream in keys.token_streams(token):
                pipe.xlen(stream)
            pipe.zcount(keys.token_in_flight(token), since, "+inf")
        clients, *counts = await pipe.execute()
        width = len(keys.PRIORITIES) + 1
        queues = []
        for i, (token, client) in enumerate(zip(tokens, clients, strict=True)):
            *lengths, in_flight = map(int, counts[i * width : (i + 1) * width])
            queues.append(
                TokenQueue(
                    token,
                    str(client or ""),  # queued by an older gateway: counted against one unnamed client
                    dict(zip(keys.PRIORITIES, lengths, strict=True)),
                    in_flight,
                )
            )
        return queues

    async def _read(self, tokens: Sequence[str], plan: Plan) -> tuple[list[Read], list[str]]:
        """Read what the plan allows, high streams first so that they reach the work streams first."""
        asked = [(t, p) for p in keys.PRIORITIES for t in tokens if plan.get((t, p), 0) > 0]
        if not asked:
            return [], []
        pipe = self._redis.pipeline(transaction=False)
        for token, priority in asked:
            pipe.xreadgroup(
                keys.MOVER_GROUP,
                self.consumer,
                {keys.token_stream(token, priority): ">"},
                count=plan[(token, priority)],
            )
        results = await pipe.execute(raise_on_error=False)
        reads: list[Read] = []
        found: dict[str, bool] = {}
        for (token, priority), result in zip(asked, results, strict=True):
            stream = keys.token_stream(token, priority)
            if isinstance(result, Exception):
                if redisio.is_nogroup(result):
                    await redisio.ensure_group(self._redis, stream, keys.MOVER_GROUP)
                    found[token] = True  # not known to be empty: read again next round
                    continue
                raise result
            entries = result[0][1] if result else []
            found[token] = found.get(token, False) or bool(entries)
            reads.extend((stream, entry_id, fields) for entry_id, fields in entries)
        return reads, [t for t, any_read in found.items() if not any_read]

    async def _claim(self, tokens: Sequence[str]) -> list[Read]:
        """Entries a dead mover read but never acknowledged."""
        idle_ms = int(self._settings.mover_claim_idle_s * 1000)
        streams = [stream for token in tokens for stream in keys.token_streams(token)]
        pipe = self._redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xautoclaim(
                stream, keys.MOVER_GROUP, self.consumer, idle_ms, "0-0", count=self._settings.mover_batch
            )
        reads: list[Read] = []
        for stream, result in zip(streams, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                continue  # NOGROUP: nothing can be pending there
            claimed = [(stream, entry_id, fields) for entry_id, fields in result[1] if fields]
            metrics.CLAIMED.inc(len(claimed))
            reads.extend(claimed)
        return reads

    async def move(self, reads: list[Read]) -> int:
        """Append each entry to its work stream, then acknowledge and delete it in its token queue."""
        if not reads:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        done: dict[str, list[str]] = {}
        targets: list[str] = []
        appends: list[tuple[str, JobEntry]] = []
        in_flight: dict[str, dict[str, int]] = {}  # token -> job id -> when moved (ms)
        now_ms = int(time.time() * 1000)
        for source, entry_id, fields in reads:
            done.setdefault(source, []).append(entry_id)
            try:
                entry = JobEntry.from_fields(fields)
                stream = keys.work_stream(entry.target)
            except ValueError as exc:
                metrics.MALFORMED.inc()
                log.error("malformed entry %s in token queue: %s", entry_id, exc)
                pipe.xadd(
                    keys.DEAD_LETTERS,
                    maxlen=keys.DEAD_LETTERS_MAX,
                    approximate=True,
                    fields=redisio.fields({**fields, "dlq_reason": "malformed", "dlq_source": "mover"}),
                )
                continue
            with telemetry.tracer().start_as_current_span(
                telemetry.SPAN_MOVE,
                context=telemetry.extract_fields(entry.trace),
                kind=trace.SpanKind.CONSUMER,
            ) as span:
                span.set_attribute(telemetry.ATTR_JOB_ID, entry.job_id)
                span.set_attribute(telemetry.ATTR_STREAM, stream)
                entry = entry.with_trace(dict(telemetry.inject_fields({})))
            appends.append((stream, entry))
            if self.scheduler.in_flight_cap:
                in_flight.setdefault(entry.token, {})[entry.job_id] = now_ms
        for token, members in in_flight.items():
            # Before the work entries, so no worker can finish one before its member exists (MULTI cannot
            # span a token key and a work stream on a cluster); members past the horizon go.
            name = keys.token_in_flight(token)
            pipe.zremrangebyscore(name, "-inf", f"({now_ms - self._in_flight_horizon_ms}")
            pipe.zadd(name, dict(members))
            pipe.pexpire(name, 2 * self._in_flight_horizon_ms)
        for stream, entry in appends:
            pipe.xadd(stream, redisio.fields(entry.to_fields()))
            targets.append(entry.target)
        await pipe.execute()
        ack = self._redis.pipeline(transaction=False)
        for stream, ids in done.items():
            ack.xack(stream, keys.MOVER_GROUP, *ids)
            ack.xdel(stream, *ids)
        await ack.execute()
        for target in targets:
            metrics.MOVED.labels(target=target).inc()
        return len(reads)

    async def _deactivate(self, tokens: Iterable[str]) -> None:
        """Drop drained tokens from the active set, re-adding any whose queues received work meanwhile.

        The gateway appends before it adds the token, so removing first and checking the
        length after can never strand a job. The token's queues and the scheduler's sets live in
        different cluster slots, so this cannot be one atomic step: the removal marks the token
        draining instead, and a mover killed before the check leaves it there for
        `repair_draining` (any mover) to finish.
        """
        tokens = list(tokens)
        if not tokens:
            return
        sched = (keys.ACTIVE_TOKENS, keys.DRAINING_TOKENS)
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            # EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot; these are tiny.
            pipe.eval(_BEGIN_DRAIN, 2, *sched, token, now_ms)
        await pipe.execute()
        await self._end_drain(tokens)

    async def _end_drain(self, tokens: list[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            for stream in keys.token_streams(token):
                pipe.xlen(stream)
        lengths = await pipe.execute()
        width = len(keys.PRIORITIES)
        pipe = self._redis.pipeline(transaction=False)
        for i, token in enumerate(tokens):
            holds = any(int(n) > 0 for n in lengths[i * width : (i + 1) * width])
            pipe.eval(
                _END_DRAIN,
                3,
                keys.ACTIVE_TOKENS,
                keys.DRAINING_TOKENS,
                keys.TOKEN_CLIENTS,
                token,
                "1" if holds else "0",
            )
        await pipe.execute()

    async def repair_draining(self) -> int:
        """Finish taking out the tokens a dead mover left draining; returns how many."""
        cutoff = int((time.time() - DRAIN_ABANDONED_S) * 1000)
        left: list[Any] = await self._redis.zrangebyscore(
            keys.DRAINING_TOKENS, "-inf", cutoff, start=0, num=500
        )
        if left:
            log.warning("finishing %d token(s) a mover left draining", len(left))
            await self._end_drain([str(t) for t in left])
        return len(left)

    async def export_depths(self) -> None:
        """Refresh the queue-depth gauges (every mover exports them; any replica's value is current)."""
        pipe = self._redis.pipeline(transaction=False)
        for target in keys.TARGETS:
            pipe.xlen(keys.work_stream(target))
        pipe.zcard(keys.DELAYED)
        pipe.xlen(keys.DEAD_LETTERS)
        pipe.xlen(keys.WEBHOOKS)
        names = [f"work:{t}" for t in keys.TARGETS] + ["delayed", "dead_letters", "webhooks"]
        for name, depth in zip(names, await pipe.execute(), strict=True):
            metrics.QUEUE_DEPTH.labels(queue=name).set(int(depth))

    async def pump_delayed(self) -> int:
        """Put due retries back into their token queues (one mover at a time holds the lease)."""
        if not await self._lease(
            keys=[keys.delayed_lock()], args=[self.consumer, int(DELAYED_PUMP_S * 4000)]
        ):
            return 0
        due: list[Any] = await self._redis.zrangebyscore(
            keys.DELAYED, "-inf", int(time.time() * 1000), start=0, num=500
        )
        if not due:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for member in due:
            try:
                raw = json.loads(member)
                entry = JobEntry.from_fields(raw if isinstance(raw, dict) else {})
            except ValueError as exc:  # JSONDecodeError is one
                metrics.MALFORMED.inc()
                log.error("malformed delayed entry: %s", exc)
                pipe.xadd(
                    keys.DEAD_LETTERS,
                    maxlen=keys.DEAD_LETTERS_MAX,
                    approximate=True,
                    fields={"raw": str(member), "dlq_reason": "malformed", "dlq_source": "mover"},
                )
                continue
            tokenqueue.enqueue(pipe, entry)  # back into the stream of its own priority
        await pipe.execute()
        await self._redis.zrem(keys.DELAYED, *due)
        metrics.REQUEUED.inc(len(due))
        return len(due)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
