"""The cache's Lua scripts touch only the keys they declare in KEYS (watched on a real Redis).

Redis Cluster routes a script by its declared keys; a key built inside the script, or passed in
ARGV, may live on another node. MONITOR shows each command a script runs, so every key each
command names is checked against its call's KEYS, on every branch of every script.
"""

from __future__ import annotations

from typing import Any

from redis.crc import key_slot

from cache.store import CacheStore, GetOp, PutOp
from common import keys, redisio
from common.settings import Settings
from tests.helpers.monitor import keys_of, monitoring, script_calls, undeclared

TOKEN = "e" * 32
METHOD = "flickr.photos.getInfo"


def _settings(redis_url: str) -> Settings:
    values: dict[str, Any] = {
        "cache_redis_url": redis_url,
        "cache_ttl_read_s": 300,
        "cache_warm_enabled": True,
    }
    return Settings.from_env(env={}, **values)


async def test_every_key_a_cache_script_touches_is_declared_in_its_keys(
    cache_redis_url: str, cache_redis: redisio.Redis
) -> None:
    client = redisio.client(cache_redis_url, decode=False)
    settings = _settings(cache_redis_url)
    store = CacheStore(client, settings)
    await store.load_scripts()
    try:
        async with monitoring(cache_redis_url) as monitor:
            # A Put that seeds both generations, invalidations of each scope, then a Put from a
            # replica that never renewed them (renews their expiry).
            await store.put(METHOD, {"photo_id": "1"}, TOKEN, b"one", 300)
            await store.invalidate(TOKEN)
            await store.invalidate(TOKEN, METHOD)
            await CacheStore(client, settings).put(METHOD, {"photo_id": "1"}, TOKEN, b"one", 300)
            # A batched miss, then a batched Put of its scope that is due to renew: the script with
            # the generations the miss read.
            batcher = CacheStore(client, settings)
            found, _ = await batcher.exchange([GetOp(METHOD, {"photo_id": "2"}, TOKEN)], [])
            assert found == [None]
            _, stored = await batcher.exchange([], [PutOp(METHOD, {"photo_id": "2"}, TOKEN, b"two", 300)])
            assert stored == [None]
            # Warming: a popular entry near expiry is claimed (the claim script to its last step).
            for _ in range(3):
                assert await store.get(METHOD, {"photo_id": "1"}, TOKEN) is not None
            claimed = await store.warm_candidates(top=10, min_requests=3, within_s=600, limit=5, claim_s=30)
            assert [c.params for c in claimed] == [{"photo_id": "1"}]
            seen = await monitor.stop()
        calls = script_calls(seen)
        ran = {c.script for c in calls}
        assert {s.sha.encode() for s in store.scripts} <= ran, "a cache script was not exercised"
        inner = {command[0].upper() for c in calls for command in c.commands}
        assert inner >= {b"TIME", b"MGET", b"GET", b"SET", b"EXPIRE", b"GETRANGE", b"TTL"}
        touched = {k for c in calls for command in c.commands for k in await keys_of(cache_redis, command)}
        assert (
            keys.cache_warm_claim(TOKEN, keys.cache_digest(METHOD, {"photo_id": "1"}, TOKEN)).encode()
            in touched
        )
        assert await undeclared(cache_redis, calls) == []
        # Declared keys share one cluster slot: the token's hash tag.
        for call in calls:
            assert {key_slot(k) for k in call.declared} == {key_slot(TOKEN.encode())}, call.declared
    finally:
        await store.close()
        await client.aclose()
