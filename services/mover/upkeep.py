"""The mover's periodic chores: due retries, tokens a dead mover left draining, claims, gauges.

None of them runs every round: the retry pump and the draining repair are asked about in a
round's first round trip every DELAYED_PUMP_S and act only when there is something to do;
the token streams are swept for a dead mover's entries at start, MOVER_CLAIM_IDLE_S later, when a
mover falls silent (and once more MOVER_CLAIM_IDLE_S after) and every SWEEP_S; the entries this
mover holds are kept fresh every MOVER_CLAIM_IDLE_S / 4; gauges every GAUGES_S, the in-flight trim
every IN_FLIGHT_TRIM_S (mover.mover).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from common import keys, redisio, tokenqueue
from common.jobs import JobEntry
from mover import drain, metrics
from mover.view import Held, TokenState, priority_of, token_of

log = logging.getLogger(__name__)

PIPELINE_CHUNK = 200

# Take the lease if free, or renew it if we hold it: the holder keeps pumping, others wait for expiry.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


async def requeue_due(redis: redisio.Redis, due: Sequence[Any], dead_letters_max: int) -> int:
    """Put due retries (fh:delayed members) back into their token queues; malformed ones: dead letters."""
    if not due:
        return 0
    pipe = redis.pipeline(transaction=False)
    for member in due:
        try:
            raw = json.loads(member)
            entry = JobEntry.from_fields(raw if isinstance(raw, dict) else {})
        except ValueError as exc:  # JSONDecodeError is one
            metrics.MALFORMED.inc()
            log.error("malformed delayed entry: %s", exc)
            pipe.xadd(
                keys.DEAD_LETTERS,
                maxlen=dead_letters_max,  # DEAD_LETTERS_MAX
                approximate=True,
                fields={"raw": str(member), "dlq_reason": "malformed", "dlq_source": "mover"},
            )
            continue
        tokenqueue.enqueue(pipe, entry)  # back into the stream of its own priority
    await pipe.execute()
    await redis.zrem(keys.DELAYED, *due)
    metrics.REQUEUED.inc(len(due))
    return len(due)


async def finish_draining(redis: redisio.Redis, tokens: list[str]) -> None:
    """Step two of taking tokens out of the active set, for tokens whose step one is done."""
    if not tokens:
        return
    pipe = redis.pipeline(transaction=False)
    for token in tokens:
        for command in drain.check(token):
            pipe.execute_command(*command)
    lengths = await pipe.execute()
    width = len(keys.PRIORITIES)
    pipe = redis.pipeline(transaction=False)
    for i, token in enumerate(tokens):
        pipe.execute_command(*drain.end(token, drain.holds(lengths[i * width : (i + 1) * width])))
    await pipe.execute()


async def export_depths(redis: redisio.Redis) -> None:
    """Refresh the queue-depth gauges (every mover exports them; any replica's value is current)."""
    pipe = redis.pipeline(transaction=False)
    for target in keys.TARGETS:
        pipe.xlen(keys.work_stream(target))
    pipe.zcard(keys.DELAYED)
    pipe.xlen(keys.DEAD_LETTERS)
    pipe.xlen(keys.WEBHOOKS)
    names = [f"work:{t}" for t in keys.TARGETS] + ["delayed", "dead_letters", "webhooks"]
    for name, depth in zip(names, await pipe.execute(), strict=True):
        metrics.QUEUE_DEPTH.labels(queue=name).set(int(depth))


async def trim_in_flight(redis: redisio.Redis, before_ms: int, chunk: int = 1000) -> int:
    """Drop keys.IN_FLIGHT members moved before `before_ms` (removals that never came); how many.

    The set holds what the work streams hold (MOVER_WORK_BACKLOG per target, plus what runs), so
    reading it whole every IN_FLIGHT_TRIM_S is cheap; several movers trimming at once is harmless.
    """
    stale: list[str] = []
    low = "-"
    while True:
        page = cast("list[str]", await redis.zrangebylex(keys.IN_FLIGHT, low, "+", 0, chunk))  # decoded
        for member in page:
            parsed = keys.in_flight_parsed(member)
            if parsed is None or parsed[1] < before_ms:
                stale.append(member)
        if len(page) < chunk:
            break
        low = "(" + page[-1]
    for i in range(0, len(stale), chunk):
        await redis.zrem(keys.IN_FLIGHT, *stale[i : i + chunk])
    if stale:
        log.info("dropped %d in-flight member(s) whose removal never came", len(stale))
    return len(stale)


async def claim(
    redis: redisio.Redis,
    consumer: str,
    tokens: dict[str, TokenState],
    idle_ms: int,
    count: int,
    others: Iterable[str] = (),
) -> bool:
    """Claim what a dead mover read and never moved (held from now on).

    The streams of `others` (tokens `tokens` does not hold) are swept too; one with claimed entries
    joins `tokens`, not yet loaded. Returns whether any did.
    """
    streams = [s for token in [*tokens, *others] for s in keys.token_streams(token)]
    now = time.monotonic()
    joined = False
    for start in range(0, len(streams), 3 * PIPELINE_CHUNK):
        chunk = streams[start : start + 3 * PIPELINE_CHUNK]
        pipe = redis.pipeline(transaction=False)
        for stream in chunk:
            pipe.xautoclaim(stream, keys.MOVER_GROUP, consumer, idle_ms, "0-0", count=count)
        for stream, result in zip(chunk, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                continue  # NOGROUP: nothing can be pending there
            claimed = [Held(stream, entry_id, fields, now) for entry_id, fields in result[1] if fields]
            token = token_of(stream)
            state = tokens.get(token)
            if state is None:
                if not claimed:
                    continue
                state = tokens[token] = TokenState(token)
                joined = True
            before = state.held_total
            state.add_claimed(priority_of(stream), claimed)
            metrics.CLAIMED.inc(state.held_total - before)
    return joined


async def keep_fresh(
    redis: redisio.Redis, consumer: str, tokens: dict[str, TokenState], after_s: float
) -> None:
    """Reset the idle time of entries held for `after_s` or more, so no other mover claims them; drop any
    one did."""
    now = time.monotonic()
    old = [(state, h) for state in tokens.values() for h in state.all_held() if now - h.read_at >= after_s]
    if not old:
        return
    pipe = redis.pipeline(transaction=False)
    for _, h in old:
        # Only while still idle since this mover read it: a claim by another mover reset that.
        idle_ms = max(0, int((now - h.read_at) * 1000) - 100)
        pipe.xclaim(h.stream, keys.MOVER_GROUP, consumer, idle_ms, [h.entry_id], justid=True)
    for (state, h), result in zip(old, await pipe.execute(raise_on_error=False), strict=True):
        state.refreshed(h, now, kept=not isinstance(result, Exception) and bool(result))


async def put_back(redis: redisio.Redis, tokens: dict[str, TokenState]) -> list[Held]:
    """Queue again what this mover holds (a copy appended first); returns the originals to acknowledge."""
    held = [h for state in tokens.values() for h in state.all_held()]
    if not held:
        return []
    pipe = redis.pipeline(transaction=False)
    for h in held:
        pipe.xadd(h.stream, redisio.fields(h.fields))
    for token in {token_of(h.stream) for h in held}:
        pipe.sadd(keys.ACTIVE_TOKENS, token)
    await pipe.execute()
    for state in tokens.values():
        state.drop_held()
    return held
