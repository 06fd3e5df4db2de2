"""Cache hit latency over gRPC against the bare Redis GET round trip it wraps, measured in the same run."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc

from cache.app import CacheApp
from common import redisio
from common.settings import Settings
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

TOKEN = "c" * 32


def _pcts(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 1),
    }


async def run(n: int, redis_url: str) -> dict[str, Any]:
    """Sequential Get hits through the cache service vs sequential GETs on the same Redis."""
    app = CacheApp(Settings.from_env(env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=redis_url))
    await app.start()
    redis = redisio.client(redis_url, decode=False)
    try:
        await redis.set("bench:baseline", b"x" * 2048)
        baseline: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await redis.get("bench:baseline")
            baseline.append(time.perf_counter() - t0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            key = cache_pb2.CacheKey(
                method="flickr.photos.getInfo", params={"photo_id": "1"}, token_id_hash=TOKEN
            )
            await stub.Put(cache_pb2.CachePutRequest(key=key, value=b"x" * 2048))
            hits: list[float] = []
            for _ in range(n):
                t0 = time.perf_counter()
                resp = await stub.Get(cache_pb2.CacheGetRequest(key=key))
                hits.append(time.perf_counter() - t0)
                assert resp.hit
    finally:
        await redis.aclose()
        await app.stop(1.0)
    grpc_hit = _pcts(hits)
    redis_get = _pcts(baseline)
    return {
        "requests": n,
        "grpc_get_hit": grpc_hit,
        "baseline_redis_get": redis_get,
        "p50_ratio": round(grpc_hit["p50_us"] / redis_get["p50_us"], 2),
    }


if __name__ == "__main__":
    import json
    import sys

    print(
        json.dumps(asyncio.run(run(int(sys.argv[2]) if len(sys.argv) > 2 else 2000, sys.argv[1])), indent=2)
    )
