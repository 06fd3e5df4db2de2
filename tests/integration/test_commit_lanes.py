"""The gateway's group commit in two lanes: a flooding token's jobs never share a batch with another's.

Against a real MongoDB stand-in and Redis: every insert the committer sends is recorded by a
pymongo command listener, so the batches are read off the wire.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from common import keys, redisio
from common.jobs import JobEntry
from gateway.batcher import HEAVY_AT, JobCommitter


class Inserts(monitoring.CommandListener):
    """The job ids of every insert command, in the order sent."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.batches.append([str(d["job_id"]) for d in event.command.get("documents", [])])

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
