"""The gateway's group commit in two lanes: a flooding token's jobs never share a batch with another's.

Against a real MongoDB stand-in and Redis: every insert the committer sends is recorded by a
pymongo command listener, so the batches are read off the wire.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from common import keys, redisio
from common.jobs import JobEntry
from gateway.batcher import HEAVY_AT, JobCommitter


class Inserts(monitoring.CommandListener):
    """The job ids of every insert command, in the order sent; `on_insert` runs as each is sent."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.on_insert: Callable[[], object] = lambda: None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.batches.append([str(d["job_id"]) for d in event.command.get("documents", [])])
            self.on_insert()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _job(token: str) -> tuple[dict[str, Any], JobEntry]:
    job_id = uuid.uuid4().hex
    entry = JobEntry(job_id, token, "user", "flickr.test.echo", "rest", {}, 3, client_id="c")
    return {"job_id": job_id, "token_id_hash": token, "status": "queued", "rev": 0}, entry


async def test_a_flooding_token_commits_in_its_own_lane_and_every_job_is_written_and_queued(
    mongo_url: str, mongo_db_name: str, redis_url: str, redis: redisio.Redis
) -> None:
    listener = Inserts()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, event_listeners=[listener])
    try:
        jobs = client[mongo_db_name]["jobs"]
        committer = JobCommitter(jobs, redis, None, window_ms=20)
        flood = [_job("f" * 32) for _ in range(40)]
        small = [_job("s" * 32) for _ in range(3)]
        flood_ids = {doc["job_id"] for doc, _ in flood}
        waits = [asyncio.ensure_future(committer.commit(doc, entry)) for doc, entry in flood]
        await asyncio.sleep(0)  # the flood is in the committer: its token is heavy now
        waits += [asyncio.ensure_future(committer.commit(doc, entry)) for doc, entry in small]
        await asyncio.gather(*waits)
        await committer.drain()
        light_flood: set[str] = set()
        for batch in listener.batches:
            if any(job_id not in flood_ids for job_id in batch):
                light_flood |= {j for j in batch if j in flood_ids}
        # Only the flood's first HEAVY_AT jobs (before its token was heavy) shared the light lane.
        assert HEAVY_AT == 4
        assert len(light_flood) <= 4
        assert {doc["job_id"] for doc, _ in small} <= {j for b in listener.batches for j in b}
        assert await jobs.count_documents({}) == 43
        assert await redis.xlen(keys.token_stream("f" * 32)) == 40
        assert await redis.xlen(keys.token_stream("s" * 32)) == 3
        assert committer._open == {}  # nothing counted once every commit returned
    finally:
        await client.drop_database(mongo_db_name)
        await client.close()


async def test_a_commit_cancelled_before_its_flush_is_never_written(
    mongo_url: str, mongo_db_name: str, redis: redisio.Redis
) -> None:
    listener = Inserts()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, event_listeners=[listener])
    try:
        jobs = client[mongo_db_name]["jobs"]
        committer = JobCommitter(jobs, redis, None, window_ms=100)
        (gone, gone_entry), (kept, kept_entry) = _job("g" * 32), _job("g" * 32)
        cancelled = asyncio.ensure_future(committer.commit(gone, gone_entry))
        await asyncio.sleep(0.01)  # waiting for the window, in the same batch as the next one
        cancelled.cancel()
        await committer.commit(kept, kept_entry)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await committer.drain()
        assert listener.batches == [[kept["job_id"]]]  # the batch went without it
        assert await jobs.count_documents({}) == 1
        assert await redis.xlen(keys.token_stream("g" * 32)) == 1
    finally:
        await client.drop_database(mongo_db_name)
        await client.close()


async def test_a_commit_cancelled_while_its_flush_writes_is_taken_back(
    mongo_url: str, mongo_db_name: str, redis: redisio.Redis
) -> None:
    listener = Inserts()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, event_listeners=[listener])
    try:
        jobs = client[mongo_db_name]["jobs"]
        committer = JobCommitter(jobs, redis, None, window_ms=1)
        (gone, gone_entry), (kept, kept_entry) = _job("w" * 32), _job("w" * 32)
        cancelled = asyncio.ensure_future(committer.commit(gone, gone_entry))
        loop = asyncio.get_running_loop()
        listener.on_insert = lambda: loop.call_soon(cancelled.cancel)  # the insert is on its way
        answered = asyncio.ensure_future(committer.commit(kept, kept_entry))
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await answered
        await committer.drain()  # the flush, and taking the abandoned job back
        assert listener.batches == [[gone["job_id"], kept["job_id"]]]  # both were written...
        assert (
            await redis.xlen(keys.token_stream("w" * 32)) == 2
        )  # ...and queued (an entry without a job is dropped)
        assert [d["job_id"] async for d in jobs.find({}, {"job_id": 1})] == [kept["job_id"]]
    finally:
        await client.drop_database(mongo_db_name)
        await client.close()
