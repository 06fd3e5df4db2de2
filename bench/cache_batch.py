"""Cache CPU per job: single Get/Put calls against batched ones (Exchange, ExchangeStream).

A cache service process (`python -m cache`, as deployed) on its own Redis serves the
cache traffic of jobs that arrive at `rate` per second (Poisson) in this process: each
job looks its answer up (a miss: every job has its own params) inside a sampled
`flickrhub.cache.lookup` span, waits `work_ms` (the Flickr call), then stores ~300 bytes
inside a `flickrhub.cache.store` span, as the worker's executor does. Modes:

- `none`: the same jobs without any cache call (the driver's own cost, subtracted);
- `single`: the worker's client before batching: one traced unary Get and Put per job;
- `unary:<ms>`: `CacheClient(stream=False)`: batches as Exchange calls, a window of <ms>;
- `stream:<ms>`: `CacheClient()` (what the worker runs): batches on one ExchangeStream;
- `direct`: no service hop: the cache's store code in this process, one pipeline per operation
  (what a worker would spend sending the cache commands itself: the floor of any design).

Per job: the cache process's CPU (/proc), the client's CPU (this process minus `none`),
Redis commands on the cache Redis (INFO commandstats, scripts' inner commands included)
and the mean operations per batch. `traced=False` runs the jobs without spans (no trace
context rides the operations), which shows what the per-operation server spans cost.

    python -m bench.cache_batch [--rates 50,200,500] [--seconds 4] [--modes none,single,stream:5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import grpc

from cache.store import CacheStore
from common import redisio, telemetry
from common.service import insecure_channel
from common.settings import Settings
from devstack.procs import Managed, free_port, python_module, wait_for_port
from devstack.stores import redis_server
from flickrhub.v1 import cache_pb2, cache_pb2_grpc
from worker.cache_client import CacheClient

TOKEN = "b" * 32
METHOD = "flickr.photos.getInfo"
ANSWER = {"photo": {"id": "1", "title": "x" * 200, "owner": "12345@N00"}, "stat": "ok"}
MODES = ("none", "single", "unary:2", "stream:2", "stream:5", "stream:10")
_TICK = os.sysconf("SC_CLK_TCK")

Job = Callable[[int], Coroutine[Any, Any, None]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def redis_commands(redis: redisio.Redis) -> int:
    """Commands the cache Redis ran so far (INFO and CONFIG excluded)."""
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config"))
    )


def _span(traced: bool, name: str) -> AbstractContextManager[Any]:
    return telemetry.tracer().start_as_current_span(name) if traced else nullcontext()


def single_job(addr: str, traced: bool, work_s: float) -> tuple[Job, Callable[[], Awaitable[None]]]:
    """One traced unary Get and Put per job (the worker's cache client before batching)."""
    channel = insecure_channel(addr)
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    body = json.dumps(ANSWER, separators=(",", ":")).encode()

    async def job(i: int) -> None:
        key = cache_pb2.CacheKey(method=METHOD, params={"photo_id": str(i)}, token_id_hash=TOKEN)
        with _span(traced, telemetry.SPAN_CACHE_LOOKUP), contextlib.suppress(grpc.aio.AioRpcError):
            resp = await stub.Get(cache_pb2.CacheGetRequest(key=key), timeout=0.5)
            if resp.hit:
                json.loads(resp.value)
        await asyncio.sleep(work_s)
        with _span(traced, telemetry.SPAN_CACHE_STORE), contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Put(cache_pb2.CachePutRequest(key=key, value=body), timeout=0.5)

    return job, channel.close


def direct_job(redis_url: str, traced: bool, work_s: float) -> tuple[Job, Callable[[], Awaitable[None]]]:
    """The floor without the service hop: the cache's own store code run in this process."""
    redis = redisio.client(redis_url, decode=False)
    store = CacheStore(redis, Settings.from_env(env={}, cache_redis_url=redis_url))
    body = json.dumps(ANSWER, separators=(",", ":")).encode()

    async def job(i: int) -> None:
        params = {"photo_id": str(i)}
        with _span(traced, telemetry.SPAN_CACHE_LOOKUP):
            hit = await store.get(METHOD, params, TOKEN)
            if hit is not None:
                json.loads(hit.value)
        await asyncio.sleep(work_s)
        with _span(traced, telemetry.SPAN_CACHE_STORE):
            await store.put(METHOD, params, TOKEN, body, store.ttl_for(METHOD))

    return job, redis.aclose


def client_job(
    addr: str, traced: bool, work_s: float, mode: str, window_s: float
) -> tuple[Job, Callable[[], Awaitable[None]]]:
    """Get and Put through the worker's CacheClient (`none`: no cache call at all)."""
    client = CacheClient(addr, 0.5, window_s=window_s, stream=mode == "stream")

    async def job(i: int) -> None:
        params = {"photo_id": str(i)}
        with _span(traced, telemetry.SPAN_CACHE_LOOKUP):
            if mode != "none":
                await client.get(METHOD, params, TOKEN)
        await asyncio.sleep(work_s)
        with _span(traced, telemetry.SPAN_CACHE_STORE):
            if mode != "none":
                await client.put(METHOD, params, TOKEN, ANSWER)

    return job, client.close


async def drive(job: Job, rate: float, seconds: float, first: int) -> int:
    """Start jobs at `rate` per second (Poisson) for `seconds`; wait for all; how many ran."""
    rng = random.Random(first)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    due, i = 0.0, first
    while due < seconds:
        ahead = due - (time.perf_counter() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
        task = asyncio.create_task(job(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        due += rng.expovariate(rate)
    while tasks:
        await asyncio.gather(*tasks)
    return i - first


async def batch_count(metrics_port: int) -> float:
    """Batches the service ran so far (its flickrhub_cache_batch_ops histogram)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flickrhub_cache_batch_ops_count")
    )


async def point(
    cache: Managed,
    metrics_port: int,
    redis: redisio.Redis,
    redis_url: str,
    mode: str,
    rate: float,
    seconds: float,
    traced: bool,
) -> dict[str, float]:
    """One mode at one rate: CPU per job on both sides, Redis commands per job, operations per batch."""
    addr = f"127.0.0.1:{cache.port}"
    work_s = 0.005
    kind, _, window_ms = mode.partition(":")
    if kind == "single":
        job, close = single_job(addr, traced, work_s)
    elif kind == "direct":
        job, close = direct_job(redis_url, traced, work_s)
    else:
        job, close = client_job(addr, traced, work_s, kind, float(window_ms or 2) / 1000)
    assert cache.proc is not None
    try:
        await drive(job, rate, 0.5, 10_000_000)  # warm up: channel, stream, scripts
        await redis.flushall()
        server0, client0 = cpu_seconds(cache.proc.pid), time.process_time()
        commands0, batches0 = await redis_commands(redis), await batch_count(metrics_port)
        n = await drive(job, rate, seconds, int(time.time() * 1000) % 1_000_000 * 1000)
        server, client = cpu_seconds(cache.proc.pid) - server0, time.process_time() - client0
        commands, batches = (
            await redis_commands(redis) - commands0,
            await batch_count(metrics_port) - batches0,
        )
    finally:
        await close()
    return {
        "jobs": n,
        "cache_ms_per_job": round(server * 1000 / n, 3),
        "process_ms_per_job": round(client * 1000 / n, 3),
        "redis_commands_per_job": round(commands / n, 2),
        "ops_per_batch": round(2 * n / batches, 2) if batches else 0.0,
    }


async def run(rates: list[float], seconds: float, modes: list[str], traced: bool = True) -> dict[str, Any]:
    """Every mode at every rate against one cache service process; the client's cost net of `none`."""
    telemetry.setup_tracing("bench")
    with tempfile.TemporaryDirectory(prefix="flickrhub-cache-batch-") as tmp:
        store = redis_server("cache", Path(tmp) / "redis", maxmemory="256mb").start()
        port, metrics_port = free_port(), free_port()
        env = {
            "CACHE_PORT": str(port),
            "CACHE_METRICS_PORT": str(metrics_port),
            "CACHE_REDIS_URL": f"redis://127.0.0.1:{store.port}/0",
            "LOG_LEVEL": "WARNING",
        }
        cache = Managed("cache", python_module("cache"), port, Path(tmp) / "cache.log", env=env)
        cache.start(wait=False)
        url = f"redis://127.0.0.1:{store.port}/0"
        redis = redisio.client(url)
        try:
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20.0, cache.proc)
            out: dict[str, Any] = {"seconds": seconds, "traced": traced, "rates": {}}
            for rate in rates:
                row = {
                    m: await point(cache, metrics_port, redis, url, m, rate, seconds, traced) for m in modes
                }
                if "none" in row:
                    for m in modes:
                        net = row[m]["process_ms_per_job"] - row["none"]["process_ms_per_job"]
                        row[m]["client_ms_per_job"] = round(net, 3)
                out["rates"][str(rate)] = row
            return out
        finally:
            await redis.aclose()
            cache.stop()
            store.stop()


def main() -> None:
    """Command line: the table as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,200,500", help="jobs per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--untraced", action="store_true", help="jobs without spans (no trace context)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    result = asyncio.run(run(rates, args.seconds, args.modes.split(","), traced=not args.untraced))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
