"""Cache hit latency over gRPC against the bare Redis GET round trip it wraps, measured in the same run.

Three sequential loops on one Redis, in one process (client and server share the
event loop, so the gRPC figure carries both sides' CPU, as a worker on the same
host would see it):

- `baseline_redis_get`: GET of a 2 KiB value (one round trip, nothing else);
- `store_get_hit`: the cache's store call (EVALSHA reading two generations, the
  entry and its TTL, pipelined with the stats HINCRBYs; one round trip);
- `grpc_get_hit`: CacheService.Get through a real channel (validation, digest,
  interceptors, metrics and the store call);
- `grpc_get_hit_warming`: the same with CACHE_WARM_ENABLED (the popularity ZINCRBY rides
  the Get's pipeline: no extra round trip).

The ratios are the figures to compare between runs; the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cache.app import CacheApp
from common import redisio
from common.settings import Settings
from flickrhub.v1 import cache_pb2, cache_pb2_grpc

TOKEN = "c" * 32
METHOD = "flickr.photos.getInfo"
PARAMS = {"photo_id": "1", "extras": "url_o,tags"}
VALUE = b"x" * 2048
WARMUP = 200


def _pcts(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
    }


async def _timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


async def run(n: int, redis_url: str) -> dict[str, Any]:
    """Sequential Get hits through the cache service and its store vs sequential GETs on the same Redis."""
    app = CacheApp(Settings.from_env(env={}, cache_port=0, cache_metrics_port=-1, cache_redis_url=redis_url))
    await app.start()
    redis = redisio.client(redis_url, decode=False)
    try:
        await redis.set("bench:baseline", VALUE)
        baseline = await _timed(n, lambda: redis.get("bench:baseline"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            key = cache_pb2.CacheKey(method=METHOD, params=PARAMS, token_id_hash=TOKEN)
            await stub.Put(cache_pb2.CachePutRequest(key=key, value=VALUE))
            store = await _timed(n, lambda: app.store.get(METHOD, PARAMS, TOKEN))
            request = cache_pb2.CacheGetRequest(key=key)
            hits = await _timed(n, lambda: stub.Get(request))
            assert (await stub.Get(request)).value == VALUE
            app.store.warming = True  # what CACHE_WARM_ENABLED=true sets at start
            warming = await _timed(n, lambda: stub.Get(request))
    finally:
        await redis.aclose()
        await app.stop(1.0)
    grpc_hit, store_hit, redis_get = _pcts(hits), _pcts(store), _pcts(baseline)
    warming_hit = _pcts(warming)
    return {
        "requests": n,
        "value_bytes": len(VALUE),
        "grpc_get_hit": grpc_hit,
        "grpc_get_hit_warming": warming_hit,
        "store_get_hit": store_hit,
        "baseline_redis_get": redis_get,
        "p50_ratio": round(grpc_hit["p50_us"] / redis_get["p50_us"], 2),
        "p99_ratio": round(grpc_hit["p99_us"] / redis_get["p99_us"], 2),
        "store_p50_ratio": round(store_hit["p50_us"] / redis_get["p50_us"], 2),
        "warming_p50_ratio": round(warming_hit["p50_us"] / grpc_hit["p50_us"], 2),
    }


if __name__ == "__main__":
    import json
    import sys

    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    print(json.dumps(asyncio.run(run(count, sys.argv[1])), indent=2))
