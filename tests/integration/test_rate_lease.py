"""Rate-limit leases: a busy key's calls mostly pass without a Redis step, and nothing else changes.

Against a real Redis: the limit still holds exactly for keys too slow to lease, a busy key pays
far fewer script calls than calls, a lease ends at its deadline, and a moved epoch voids it.
"""

from __future__ import annotations

import asyncio

from pymongo.asynchronous.database import AsyncDatabase

from common import apikeys, keys, redisio
from common.apikeys import ApiKeyRecord
from common.settings import Settings
from common.vault import LocalKeyProvider, Vault
from gateway.ratelimit import RateLimiter


def _key(key_id: str, per_min: int, class_limits: dict[str, int] | None = None) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id, "lease test", ("*",), False, rate_limit_per_min=per_min, class_limits=class_limits or {}
    )


async def _evals(redis: redisio.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


async def test_a_busy_key_passes_most_calls_on_its_lease(redis: redisio.Redis) -> None:
    limiter = RateLimiter(redis, 1000, lease_s=5.0)
    key = _key("busykey1", 60_000)  # a lease may hold up to 5 s of it: 5,000 calls
    before = await _evals(redis)
    decisions = [await limiter.check(key, "read", 0) for _ in range(300)]
    assert all(d.allowed for d in decisions)
    steps = await _evals(redis) - before
    assert 0 < steps <= 12, steps  # the lease doubles with demand: 1, 2, 4, ... calls per step
    # Every call passed on a lease was taken from the bucket: Redis's TAT is ahead by at least 300 calls.
    tat = float(await redis.get(keys.api_key_rate("busykey1", "all")) or 0)
    seconds, micros = await redis.time()
    assert tat - (seconds * 1000 + micros / 1000) >= 300 * 1.0 - 50


async def test_a_key_too_slow_to_lease_is_counted_call_by_call_and_refused_at_its_limit(
    redis: redisio.Redis,
) -> None:
    limiter = RateLimiter(redis, 1000, lease_s=0.2)
    key = _key("slowkey1", 120)  # 0.4 calls per lease: never leased
    before = await _evals(redis)
    passed = [(await limiter.check(key, "read", 0)).allowed for _ in range(125)]
    assert passed == [True] * 120 + [False] * 5
    assert await _evals(redis) - before == 125
    refused = await limiter.check(key, "read", 0)
    assert not refused.allowed and refused.bucket == "all" and refused.retry_after_s > 0


async def test_a_class_limit_too_slow_to_lease_keeps_the_key_exact(redis: redisio.Redis) -> None:
    limiter = RateLimiter(redis, 1000, lease_s=0.2)
    key = _key("classkey", 60_000, {"write": 3})
    writes = [(await limiter.check(key, "write", 0)).allowed for _ in range(4)]
    assert writes == [True, True, True, False]
    assert (await limiter.check(key, "read", 0)).allowed  # the class bucket does not hold reads back


async def test_a_lease_ends_at_its_deadline_and_a_moved_epoch_voids_it(redis: redisio.Redis) -> None:
    limiter = RateLimiter(redis, 1000, lease_s=0.3)
    key = _key("epochkey", 60_000)
    for _ in range(20):
        assert (await limiter.check(key, "read", 0)).allowed
    before = await _evals(redis)
    assert (await limiter.check(key, "read", 0)).allowed  # on the lease
    assert await _evals(redis) == before
    await redis.incr(keys.api_key_epoch("epochkey"))  # a rotation elsewhere (it then waits the lease out)
    await asyncio.sleep(0.3)
    stale = await limiter.check(key, "read", 0)
    assert not stale.allowed and stale.stale
    assert (await limiter.check(key, "read", 1)).allowed  # re-authenticated under the new epoch


async def test_rotation_and_revocation_wait_out_the_leases(
    redis: redisio.Redis, mongo_db: AsyncDatabase[dict[str, object]]
) -> None:
    vault = Vault(LocalKeyProvider({1: b"k" * 32}))
    store = apikeys.ApiKeyStore.from_settings(
        mongo_db.api_keys, vault, Settings.from_env(env={}), redis=redis
    )
    issued = await store.create("waits", ["*"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await store.revoke(issued.record.key_id)
    assert loop.time() - started >= apikeys.EPOCH_LEASE_S
    assert int(await redis.get(keys.api_key_epoch(issued.record.key_id)) or 0) == 1
