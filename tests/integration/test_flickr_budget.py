"""Flickr's hourly budget: never exceeded in any hour, smoothed, shared by replicas, and never stuck."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import keys, redisio
from common.budget import HOUR_MS, Budget

steps = st.lists(
    st.tuples(st.integers(0, 90_000), st.integers(1, 40), st.integers(0, 2)),  # (advance ms, wanted, replica)
    min_size=1,
    max_size=250,
)


def _max_in_any_hour(events: list[tuple[float, int]]) -> int:
    """The most calls granted within any window of one hour."""
    worst, total, start = 0, 0, 0
    for end in range(len(events)):
        total += events[end][1]
        while events[end][0] - events[start][0] >= HOUR_MS:
            total -= events[start][1]
            start += 1
        worst = max(worst, total)
    return worst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, limit=st.integers(20, 3600), burst=st.integers(1, 10))
def test_no_hour_ever_exceeds_the_budget_whatever_the_mix_of_replicas(
    redis_url: str, plan: list[tuple[int, int, int]], limit: int, burst: int
) -> None:
    if limit <= burst:
        limit = burst + 1

    async def scenario() -> list[tuple[float, int]]:
        redis = redisio.client(redis_url)
        key = keys.flickr_budget(uuid.uuid4().hex)
        replicas = [Budget(redis, key, limit, burst) for _ in range(3)]
        now = 1_000_000.0
        events: list[tuple[float, int]] = []
        try:
            for advance, wanted, replica in plan:
                now += advance
                grant = await replicas[replica].take(wanted, now_ms=now)
                assert 0 <= grant.granted <= wanted
                if grant.granted < wanted:
                    assert grant.wait_ms > 0  # a refusal always says when to come back
                    # Nobody else takes meanwhile: after the wait, at least one call goes (no starvation).
                    retry = await replicas[(replica + 1) % 3].take(1, now_ms=now + grant.wait_ms)
                    assert retry.granted == 1
                    events.append((now + grant.wait_ms, 1))
                    now += grant.wait_ms
                if grant.granted:
                    events.append((now, grant.granted))
        finally:
            await redis.aclose()
        return sorted(events)

    events = asyncio.run(scenario())
    assert _max_in_any_hour(events) <= limit


async def test_a_full_budget_is_spread_over_the_hour(redis: redisio.Redis) -> None:
    budget = Budget(redis, keys.flickr_budget("smooth"), limit_per_hour=3500, burst=5)
    first_minute = 0
    now = 0.0
    while now < 60_000:
        first_minute += (await budget.take(100, now_ms=now)).granted
        now += 1000
    # 3,500 an hour is about 58 a minute: a burst of 5 plus the steady rate, never thousands.
    assert first_minute <= 5 + 60_000 / budget.interval_ms + 1
    assert first_minute >= 50


async def test_the_redis_clock_is_used_by_default(redis: redisio.Redis) -> None:
    budget = Budget(redis, keys.flickr_budget("clock"), limit_per_hour=10, burst=2)
    grants = [await budget.take(1) for _ in range(4)]
    assert [g.granted for g in grants][:2] == [1, 1]
    assert grants[-1].granted == 0
    assert grants[-1].wait_ms > 0
