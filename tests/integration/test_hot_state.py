"""Hot job state: reads come from Redis, MongoDB answers once Redis lost the copy, no read goes back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from prometheus_client import REGISTRY

from common import jobs, jobstore, keys, redisio
from common.hotstate import HotState
from flickrhub.v1 import jobs_pb2, legacy_pb2, legacy_pb2_grpc
from gateway import convert
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED}


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings) as running:
        yield running


def _reads(source: str) -> float:
    return REGISTRY.get_sample_value("flickrhub_gateway_job_status_reads_total", {"source": source}) or 0.0


async def _final(stack: Stack, job_id: str) -> jobs_pb2.Job:
    for _ in range(300):
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in FINAL:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never ended")


async def test_status_reads_come_from_redis_and_from_mongodb_once_redis_lost_the_copy(
    stack: Stack, redis: redisio.Redis
) -> None:
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"x": "1"})
    )
    await _final(stack, submitted.job_id)
    doc = await stack.mongo.jobs.find_one({"job_id": submitted.job_id}, {"_id": 0})
    assert doc is not None
    from_mongo = convert.job_to_proto(doc)

    redis_before, mongo_before = _reads("redis"), _reads("mongo")
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
    assert job == from_mongo  # the same answer as MongoDB, field for field
    assert (_reads("redis") - redis_before, _reads("mongo") - mongo_before) == (1, 0)
    legacy = legacy_pb2_grpc.LegacyServiceStub(stack.channel)  # the original API's status route too
    status = await legacy.GetLegacyJobStatus(
        legacy_pb2.LegacyJobStatusRequest(job_id=submitted.job_id, user_id=DEMO_USER)
    )
    assert status.state == "completed"
    assert (_reads("redis") - redis_before, _reads("mongo") - mongo_before) == (2, 0)

    await redis.delete(keys.job_state(submitted.job_id))  # expired, evicted or lost
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
    assert job == from_mongo
    assert _reads("mongo") - mongo_before == 1
    # MongoDB's answer became the copy again: the next read is Redis's.
    assert await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id)) == from_mongo
    assert (_reads("redis") - redis_before, _reads("mongo") - mongo_before) == (3, 1)
    ttl = await redis.ttl(keys.job_state(submitted.job_id))
    assert 0 < ttl <= stack.settings.job_hot_ttl_s


def _doc(job_id: str, rev: int = 0) -> dict[str, Any]:
    t = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    return {
        "job_id": job_id,
        "user_id": "u",
        "client_id": "c",
        "method": "flickr.test.echo",
        "params": {"a": "1"},
        "target": "rest",
        "priority": "normal",
        "status": jobs.QUEUED,
        "rev": rev,
        "attempts": 0,
        "max_attempts": 3,
        "callback_url": "",
        "meta_json": "",
        "trace_id": "t",
        "created_at": t,
        "updated_at": t,
        "callback_secret": {"v": 1, "n": "x", "c": "secret"},
    }


def _claim(at: datetime) -> dict[str, Any]:
    return {
        "$set": {"status": jobs.RUNNING, "worker_id": "w", "lease_until": at, "updated_at": at},
        "$min": {"started_at": at},
        "$inc": {"attempts": 1, "rev": 1},
    }


async def test_a_copy_only_moves_forward_and_a_missed_revision_sends_readers_to_mongodb(
    redis: redisio.Redis,
) -> None:
    hot = HotState(redis, 60, 100)
    job_id = uuid.uuid4().hex
    at = datetime(2026, 11, 29, 12, 1, tzinfo=UTC)
    await hot.put(_doc(job_id))
    held = await hot.get(job_id)
    assert held is not None and held["status"] == jobs.QUEUED and "callback_secret" not in held
    assert "secret" not in str(await redis.get(keys.job_state(job_id)))
    await hot.apply(job_id, 1, _claim(at))
    await hot.apply(job_id, 1, _claim(at))  # a repeated write of the same revision changes nothing
    await hot.put(_doc(job_id, rev=0))  # nor does a late snapshot of an older one
    held = await hot.get(job_id)
    assert held is not None
    assert (held["rev"], held["status"], held["attempts"], held["started_at"]) == (1, jobs.RUNNING, 1, at)
    # Revision 2 was never applied here: 3 cannot be built on 1, so only a marker stays.
    done = {"$set": {"status": jobs.COMPLETED, "result_json": '{"stat":"ok"}', "finished_at": at}}
    await hot.apply(job_id, 3, done)
    assert await hot.get(job_id) is None
    await hot.put(_doc(job_id, rev=2))  # older than the marker: refused
    assert await hot.get(job_id) is None
    await hot.put({**_doc(job_id, rev=3), "status": jobs.COMPLETED, "result_json": '{"stat":"ok"}'})
    await hot.apply(job_id, 2, _claim(at))  # a straggler from before
    held = await hot.get(job_id)
    assert held is not None and (held["rev"], held["status"]) == (3, jobs.COMPLETED)
    # A result larger than the cap stays in MongoDB only: readers go there.
    await hot.apply(job_id, 4, {"$set": {"result_json": "x" * 101, "updated_at": at + timedelta(seconds=1)}})
    assert await hot.get(job_id) is None
    raw = await redis.get(keys.job_state(job_id))
    assert raw is not None and "result_json" not in json.loads(raw)


async def test_status_reads_never_go_back_while_jobs_run(stack: Stack) -> None:
    ids = [
        (
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"i": str(i)})
            )
        ).job_id
        for i in range(8)
    ]
    seen: dict[str, list[tuple[int, str]]] = {job_id: [] for job_id in ids}
    store = stack.store

    async def watch(job_id: str) -> None:
        for _ in range(400):
            doc, _source = await store.status(job_id)
            assert doc is not None
            seen[job_id].append((int(doc["rev"]), str(doc["status"])))
            if doc["status"] in jobs.FINAL_STATES:
                return
            await asyncio.sleep(0.005)

    await asyncio.gather(*(watch(job_id) for job_id in ids))
    for job_id, reads in seen.items():
        revs = [rev for rev, _ in reads]
        assert revs == sorted(revs), reads  # never an older revision after a newer one
        final = await stack.mongo.jobs.find_one({"job_id": job_id})
        assert final is not None and reads[-1] == (final["rev"], final["status"])
    assert any(len({s for _, s in reads}) > 1 for reads in seen.values())  # states were seen changing


async def test_a_copy_left_behind_by_a_dead_recorder_stops_answering_once_it_is_stale(
    stack: Stack, redis: redisio.Redis
) -> None:
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"stale": "1"})
    )
    await _final(stack, submitted.job_id)
    doc = await stack.mongo.jobs.find_one({"job_id": submitted.job_id}, {"_id": 0})
    assert doc is not None
    # A worker recorded the end in MongoDB and died before touching the copy: the copy says running.
    hot = HotState(redis, 60, 10_000)
    await redis.delete(keys.job_state(submitted.job_id))
    running = {**doc, "rev": doc["rev"] - 1, "status": jobs.RUNNING, "updated_at": datetime.now(UTC)}
    await hot.put(running)
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
    assert job.state == jobs_pb2.JOB_STATE_RUNNING  # fresh enough to be believed
    await redis.delete(keys.job_state(submitted.job_id))
    unchanged = jobstore.HOT_RECHECK_AFTER + timedelta(seconds=5)
    await hot.put({**running, "updated_at": datetime.now(UTC) - unchanged})
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED  # a live copy unchanged for long is checked
    held = await hot.get(submitted.job_id)
    assert held is not None and held["status"] == jobs.COMPLETED  # and repaired
