"""Circuit breakers in Redis: open after N failures, one half-open probe, exponential backoff, reset."""

from __future__ import annotations

import asyncio
import random
import uuid

from common import redisio
from common.breaker import CLOSED, KEY_POLICY, OPEN, PROBE, Breaker, BreakerPolicy

POLICY = BreakerPolicy(threshold=3, open_ms=300_000, max_open_ms=3_600_000, probe_lease_ms=30_000)


def _breaker(redis: redisio.Redis, seed: int = 1) -> Breaker:
    return Breaker(redis, f"key:{uuid.uuid4().hex}", POLICY, rng=random.Random(seed))


async def test_three_consecutive_failures_open_the_breaker_for_five_minutes(redis: redisio.Redis) -> None:
    breaker = _breaker(redis)
    assert (await breaker.failure(now_ms=0)).state == CLOSED
    assert (await breaker.failure(now_ms=10)).state == CLOSED
    opened = await breaker.failure(now_ms=20)
    assert (opened.state, opened.retry_after_ms) == (OPEN, 300_000)
    blocked = await breaker.allow(now_ms=1_000)
    assert not blocked.allowed
    assert blocked.retry_after_ms == 300_000 + 20 - 1_000
    assert KEY_POLICY.threshold == 3
    assert KEY_POLICY.open_ms == 300_000


async def test_a_success_in_between_resets_the_count(redis: redisio.Redis) -> None:
    breaker = _breaker(redis)
    await breaker.failure(now_ms=0)
    await breaker.failure(now_ms=1)
    await breaker.success()
    assert (await breaker.failure(now_ms=2)).state == CLOSED
    assert (await breaker.allow(now_ms=3)).state == CLOSED


async def test_after_the_pause_exactly_one_caller_gets_the_probe(redis: redisio.Redis) -> None:
    breaker = _breaker(redis)
    for t in range(3):
        await breaker.failure(now_ms=t)
    others = [Breaker(redis, breaker.name, POLICY) for _ in range(10)]  # replicas share the state
    decisions = await asyncio.gather(*(b.allow(now_ms=300_100) for b in others))
    assert [d.state for d in decisions].count(PROBE) == 1
    assert [d.state for d in decisions].count(OPEN) == 9
    # A probe that never reports expires, and another caller gets to probe.
    assert (await breaker.allow(now_ms=300_100 + 30_001)).state == PROBE


async def test_a_failed_probe_reopens_for_longer_with_jitter_and_a_success_closes(
    redis: redisio.Redis,
) -> None:
    breaker = _breaker(redis, seed=7)
    for t in range(3):
        await breaker.failure(now_ms=t)
    assert (await breaker.allow(now_ms=400_000)).state == PROBE
    second = await breaker.failure(now_ms=400_001)
    assert second.state == OPEN
    assert 600_000 <= second.retry_after_ms <= 720_000  # doubled, plus up to 20% jitter
    assert (await breaker.allow(now_ms=400_001 + second.retry_after_ms)).state == PROBE
    third = await breaker.failure(now_ms=400_002 + second.retry_after_ms)
    assert 1_200_000 <= third.retry_after_ms <= 1_440_000
    assert (await breaker.allow(now_ms=10**9)).state == PROBE
    await breaker.success()
    assert (await breaker.allow(now_ms=10**9 + 1)).state == CLOSED
    snapshot = await breaker.snapshot()
    assert snapshot["opened_total"] == "3"
    assert snapshot["openings"] == "0"


async def test_backoff_is_capped(redis: redisio.Redis) -> None:
    breaker = Breaker(redis, f"k:{uuid.uuid4().hex}", BreakerPolicy(1, 1000, 5000), rng=random.Random(3))
    now = 0
    durations = []
    for _ in range(6):
        opened = await breaker.failure(now_ms=now)
        durations.append(opened.retry_after_ms)
        now += opened.retry_after_ms
        assert (await breaker.allow(now_ms=now)).state == PROBE
    assert durations[0] == 1000
    assert max(durations) == 5000


async def test_the_redis_clock_is_the_default(redis: redisio.Redis) -> None:
    breaker = Breaker(redis, f"k:{uuid.uuid4().hex}", BreakerPolicy(1, 60_000, 60_000))
    await breaker.failure()
    decision = await breaker.allow()
    assert decision.state == OPEN
    assert 0 < decision.retry_after_ms <= 60_000
