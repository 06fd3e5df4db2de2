"""The job-write rate to MongoDB, against raw insert_one on the same server in the same run.

Four figures on one SecantusDB, each on a fresh collection of job-shaped documents:

- `baseline_insert_one_per_s`: sequential insert_one into a collection with only `_id`;
- `indexed_insert_one_per_s`: the same into `jobs` with every index FlickrHub declares
  (what the schema costs one write);
- `job_writes_per_s`: job documents written the way the gateway writes them: concurrent
  submitters (`CONCURRENCY`) through common.groupcommit's group commit;
- `hot_reads_vs_mongo_reads`: status reads from the hot copy (common.hotstate) per MongoDB read.

Ratios are the figures to compare between runs; the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import redisio
from common.groupcommit import Batcher
from common.hotstate import HotState
from common.jobstore import JobStore
from common.mongo import Mongo
from devstack.stores import mongo_url, redis_server, secantus

CONCURRENCY = 50
BATCH_WINDOW_MS = 2.0


def job_doc(i: int) -> dict[str, Any]:
    """A job document shaped like the gateway's (gateway.newjob.document)."""
    now = datetime.now(UTC)
    return {
        "job_id": uuid.uuid4().hex,
        "client_id": f"client{i % 5}",
        "user_id": f"user{i % 20}",
        "token_id_hash": f"{i % 20:032x}",
        "method": ("flickr.photos.search", "flickr.photos.getInfo", "flickr.test.echo")[i % 3],
        "params": {"text": "sunset", "page": str(i % 10)},
        "target": "rest",
        "priority": "normal",
        "cache_bypass": False,
        "status": "queued",
        "rev": 0,
        "attempts": 0,
        "max_attempts": 5,
        "callback_url": "",
        "meta_json": "",
        "trace_id": uuid.uuid4().hex,
        "created_at": now,
        "updated_at": now,
    }


async def _sequential(mongo: Mongo, collection: str, n: int) -> float:
    docs = [job_doc(i) for i in range(n)]
    t0 = time.perf_counter()
    for doc in docs:
        await mongo.db[collection].insert_one(doc)
    return n / (time.perf_counter() - t0)


async def _batched(mongo: Mongo, n: int) -> float:
    async def insert_all(batch: list[Any]) -> list[None]:
        await mongo.jobs.insert_many(batch, ordered=False)
        return [None] * len(batch)

    batcher: Batcher[Any, None] = Batcher(insert_all, window_s=BATCH_WINDOW_MS / 1000)
    docs = [job_doc(i) for i in range(n)]
    per = n // CONCURRENCY

    async def submitter(k: int) -> None:
        for doc in docs[k * per : (k + 1) * per]:
            await batcher.submit(doc)

    t0 = time.perf_counter()
    await asyncio.gather(*(submitter(k) for k in range(CONCURRENCY)))
    rate = per * CONCURRENCY / (time.perf_counter() - t0)
    await batcher.drain()
    return rate


async def _reads(mongo: Mongo, redis_url: str, n: int) -> dict[str, float]:
    redis = redisio.client(redis_url)
    try:
        # These jobs stay queued: an hour of recheck margin keeps their copies answering (the read path
        # of the copy is what is measured; live copies left unchanged for 10 s go to MongoDB).
        store = JobStore(mongo.jobs, hot=HotState(redis, 3600, 16384), hot_recheck_after=timedelta(hours=1))
        ids = [d["job_id"] async for d in mongo.jobs.find({"user_id": "user1"}, {"job_id": 1}).limit(n)]
        for job_id in ids:  # the first read of each goes to MongoDB and leaves the copy
            await store.status(job_id)
        t0 = time.perf_counter()
        for job_id in ids:
            await store.get(job_id)
        mongo_rate = len(ids) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for job_id in ids:
            _doc, source = await store.status(job_id)
            assert source == "redis"
        hot_rate = len(ids) / (time.perf_counter() - t0)
    finally:
        await redis.aclose()
    return {
        "mongo_status_reads_per_s": round(mongo_rate, 1),
        "hot_status_reads_per_s": round(hot_rate, 1),
        "hot_reads_vs_mongo_reads": round(hot_rate / mongo_rate, 2),
    }


async def measure(url: str, redis_url: str, n: int) -> dict[str, Any]:
    """All figures against the server at `url` (a fresh database, dropped afterwards)."""
    mongo = Mongo.connect(url, f"bench_jobs_{uuid.uuid4().hex[:8]}")
    try:
        await mongo.ensure_indexes()
        await _sequential(mongo, "warmup", 100)
        baseline = await _sequential(mongo, "bare_jobs", n)
        indexed = await _sequential(mongo, "jobs", n)
        await mongo.jobs.delete_many({"job_id": {"$gt": ""}})
        batched = await _batched(mongo, n * 4)
        reads = await _reads(mongo, redis_url, min(n, 200))
        indexes = len([ix async for ix in await mongo.jobs.list_indexes()])
    finally:
        await mongo.client.drop_database(mongo.db.name)
        await mongo.close()
    return {
        "jobs_indexes": indexes,
        "baseline_insert_one_per_s": round(baseline, 1),
        "indexed_insert_one_per_s": round(indexed, 1),
        "job_writes_per_s": round(batched, 1),
        "indexed_insert_one_vs_baseline": round(indexed / baseline, 3),
        "job_writes_vs_baseline": round(batched / baseline, 3),
        **reads,
    }


def run(n: int = 500) -> dict[str, Any]:
    """Start SecantusDB and Redis on free ports, measure, stop them."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-jobs-") as tmp:
        server = secantus(Path(tmp) / "mongo").start(timeout=60)
        redis = redis_server("queue", Path(tmp) / "redis").start()
        try:
            return asyncio.run(measure(mongo_url(server.port), f"redis://127.0.0.1:{redis.port}/0", n))
        finally:
            redis.stop()
            server.stop()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
