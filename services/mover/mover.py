"""Moving jobs from per-token queues into the work streams of their targets.

Each round visits every active token once (round-robin, a batch per token) and
moves what it read: append to the work stream, then acknowledge and delete in
the token stream. A mover killed between the two leaves the entries pending in
its consumer's PEL; another mover claims them (XAUTOCLAIM) and moves them
again, and the worker's guarded claim in MongoDB turns the duplicate into a no-op.
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

from common import keys, redisio, telemetry
from common.breaker import PROBE
from common.flickr_guard import FlickrGuard
from common.jobs import JobEntry
from common.settings import Settings
from mover import metrics

log = logging.getLogger(__name__)

Read = tuple[str, str, dict[str, str]]  # (token, entry id, fields)
PIPELINE_CHUNK = 200
DELAYED_PUMP_S = 0.25
GAUGES_S = 5.0

# Take the lease if free, or renew it if we hold it: the holder keeps pumping, others wait for expiry.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Leave the active set only while the token's queue is empty (the gateway appends, then adds).
_DROP_IF_EMPTY = """
if redis.call('XLEN', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


class Mover:
    """One mover replica; several may run at once."""

    def __init__(self, settings: Settings, redis: redisio.Redis, consumer: str) -> None:
        self._settings = settings
        self._redis = redis
        self.consumer = consumer
        self._offset = 0
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
            # Paused by a breaker or out of budget: wait as long as it said (at most a second).
            pause, self.wait_s = max(idle, self.wait_s), 0.0
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
        tokens = sorted(str(t) for t in await self._redis.smembers(keys.ACTIVE_TOKENS))
        metrics.ACTIVE_TOKENS.set(len(tokens))
        if now - self._last_gauges >= GAUGES_S:
            self._last_gauges = now
            await self.export_depths()
        if not tokens:
            return 0
        self._offset = (self._offset + 1) % len(tokens)
        order = tokens[self._offset :] + tokens[: self._offset]
        shares = await self._budgeted_shares(order)
        if not shares:
            return 0
        claim = now - self._last_claim >= self._settings.mover_claim_idle_s / 2
        if claim:
            self._last_claim = now
        for chunk in _chunks(order, PIPELINE_CHUNK):
            reads, empty = await self._read(chunk, shares)
            if claim:
                reads += await self._claim(chunk)
            moved += await self.move(reads)
            await self._deactivate(empty)
        metrics.ROUND_SECONDS.observe(time.perf_counter() - started)
        return moved

    async def _budgeted_shares(self, order: list[str]) -> dict[str, int]:
        """How many entries each token may move this round: breakers first, then the Flickr budget.

        The budget granted is split round-robin over the tokens, capped by what each holds, so a
        flood on one token cannot take a small token's share (the remainder goes round again).
        """
        decision = await self._guard.may_move()
        metrics.PAUSED.set(0 if decision.allowed else 1)
        if not decision.allowed:
            self.wait_s = min(1.0, decision.retry_after_ms / 1000)
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for token in order:
            pipe.xlen(keys.token_stream(token))
        caps = {
            t: min(self._settings.mover_batch, int(n))
            for t, n in zip(order, await pipe.execute(), strict=True)
        }
        await self._deactivate([t for t, n in caps.items() if n == 0])
        wanted = 1 if decision.state == PROBE else sum(caps.values())
        grant = await self._guard.budget.take(wanted)
        if grant.granted == 0:
            metrics.BUDGET_WAITS.inc()
            self.wait_s = min(1.0, max(0.005, grant.wait_ms / 1000))
            return {}
        return share(grant.granted, order, caps)

    async def _read(self, tokens: Sequence[str], shares: dict[str, int]) -> tuple[list[Read], list[str]]:
        pipe = self._redis.pipeline(transaction=False)
        asked = [t for t in tokens if shares.get(t, 0) > 0]
        for token in asked:
            pipe.xreadgroup(
                keys.MOVER_GROUP, self.consumer, {keys.token_stream(token): ">"}, count=shares[token]
            )
        results = await pipe.execute(raise_on_error=False)
        reads: list[Read] = []
        empty: list[str] = []
        for token, result in zip(asked, results, strict=True):
            if isinstance(result, Exception):
                if redisio.is_nogroup(result):
                    await redisio.ensure_group(self._redis, keys.token_stream(token), keys.MOVER_GROUP)
                    continue
                raise result
            entries = result[0][1] if result else []
            if not entries:
                empty.append(token)
            reads.extend((token, entry_id, fields) for entry_id, fields in entries)
        return reads, empty

    async def _claim(self, tokens: Sequence[str]) -> list[Read]:
        """Entries a dead mover read but never acknowledged."""
        idle_ms = int(self._settings.mover_claim_idle_s * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            pipe.xautoclaim(
                keys.token_stream(token),
                keys.MOVER_GROUP,
                self.consumer,
                idle_ms,
                "0-0",
                count=self._settings.mover_batch,
            )
        reads: list[Read] = []
        for token, result in zip(tokens, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                continue  # NOGROUP: nothing can be pending there
            claimed = [(token, entry_id, fields) for entry_id, fields in result[1] if fields]
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
        for token, entry_id, fields in reads:
            done.setdefault(token, []).append(entry_id)
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
            pipe.xadd(stream, redisio.fields(entry.to_fields()))
            targets.append(entry.target)
        await pipe.execute()
        ack = self._redis.pipeline(transaction=False)
        for token, ids in done.items():
            stream = keys.token_stream(token)
            ack.xack(stream, keys.MOVER_GROUP, *ids)
            ack.xdel(stream, *ids)
        await ack.execute()
        for target in targets:
            metrics.MOVED.labels(target=target).inc()
        return len(reads)

    async def _deactivate(self, tokens: Iterable[str]) -> None:
        """Drop drained tokens from the active set, atomically with the check that they are empty.

        One script per token: a mover killed between "remove" and "re-check" would strand a
        token whose queue just received work, so the check and the removal happen as one step.
        """
        tokens = list(tokens)
        if not tokens:
            return
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            # EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot; this one is tiny.
            pipe.eval(_DROP_IF_EMPTY, 2, keys.token_stream(token), keys.ACTIVE_TOKENS, token)
        await pipe.execute()

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
            fields = json.loads(member)
            pipe.xadd(keys.token_stream(fields["token"]), redisio.fields(fields))
            pipe.sadd(keys.ACTIVE_TOKENS, fields["token"])
        await pipe.execute()
        await self._redis.zrem(keys.DELAYED, *due)
        metrics.REQUEUED.inc(len(due))
        return len(due)


def share(granted: int, order: Sequence[str], caps: dict[str, int]) -> dict[str, int]:
    """Split `granted` moves over `order` round-robin, never above a token's cap (pure)."""
    shares = dict.fromkeys(order, 0)
    left = granted
    open_tokens = [t for t in order if caps.get(t, 0) > 0]
    while left > 0 and open_tokens:
        each = max(1, left // len(open_tokens))
        still_open = []
        for token in open_tokens:
            if left == 0:
                break
            give = min(each, caps[token] - shares[token], left)
            shares[token] += give
            left -= give
            if shares[token] < caps[token]:
                still_open.append(token)
        open_tokens = still_open
    return {t: n for t, n in shares.items() if n > 0}


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
