"""The session's real servers: queue Redis is noeviction, cache Redis allkeys-lru, Mongo speaks the wire."""

from __future__ import annotations

from typing import Any


async def test_queue_redis_never_evicts(redis: Any) -> None:
    policy = await redis.config_get("maxmemory-policy")
    assert policy["maxmemory-policy"] == "noeviction"
    assert (await redis.config_get("appendonly"))["appendonly"] == "yes"


async def test_cache_redis_evicts_least_recently_used(cache_redis: Any) -> None:
    assert (await cache_redis.config_get("maxmemory-policy"))["maxmemory-policy"] == "allkeys-lru"


async def test_mongo_round_trip(mongo_db: Any) -> None:
    await mongo_db.things.insert_one({"a": 1})
    assert (await mongo_db.things.find_one({"a": 1}))["a"] == 1
