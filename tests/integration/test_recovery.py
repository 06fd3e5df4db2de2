"""Recovery from MongoDB: live jobs whose entries Redis lost are re-enqueued, and each runs once.

The stack starts with no mover, so accepted jobs wait in their token streams where the test can
delete entries (as a lost Redis write would); a mover is started once the sweep is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from cli.main import main as cli_main
from common import jobs, keys, tokenqueue
from common.jobstore import now
from common.recovery import SweepBusy, Sweeper, lost_entry
from flickrhub.v1 import jobs_pb2
from mover.app import MoverApp
from tests.helpers.inproc import (
    DEMO_USER,
    Stack,
    running_stack,
    sandbox_calls,
    seed_demo_token,
    stack_settings,
)
from tests.helpers.uploads import upload_messages
from tests.integration.test_uploads import jpeg, upload_job

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


@pytest_asyncio.fixture
async def idle(
    redis_url: str,
    cache_redis_url: str,
    mongo_url: str,
    mongo_db_name: str,
    redis: Any,
    cache_redis: Any,  # flushed: each test's reads reach the sandbox, none is served from cache
) -> AsyncIterator[Stack]:
    """A stack with a worker but no mover: accepted jobs stay in their token streams."""
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, recovery_interval_s=0.0)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=1) as running:
        yield running


@contextlib.asynccontextmanager
async def a_mover(stack: Stack) -> AsyncIterator[MoverApp]:
    app = MoverApp(stack.settings, consumer="mover-late")
    await app.start()
    try:
        yield app
    finally:
        await app.stop(2.0)


def sweeper(stack: Stack, redis: Any) -> Sweeper:
    return Sweeper(stack.settings, redis, stack.mongo.jobs, "test-sweeper")


async def submit(stack: Stack, method: str = "flickr.test.echo", **params: str) -> str:
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method=method, params=params)
    )
    return resp.job_id


async def doc_of(stack: Stack, job_id: str) -> dict[str, Any]:
    doc = await stack.store.get(job_id)
    assert doc is not None
    return doc


async def drop_entry(stack: Stack, redis: Any, job_id: str) -> None:
    """Delete the job's entry from its token stream, as a lost write would leave it."""
    doc = await doc_of(stack, job_id)
    stream = keys.token_stream(doc["token_id_hash"], doc["priority"])
    ids = [i for i, fields in await redis.xrange(stream) if fields["job_id"] == job_id]
    assert len(ids) == 1
    await redis.xdel(stream, *ids)


async def entries_of(stack: Stack, redis: Any, job_id: str) -> int:
    doc = await doc_of(stack, job_id)
    stream = keys.token_stream(doc["token_id_hash"], doc["priority"])
    return sum(1 for _i, fields in await redis.xrange(stream) if fields["job_id"] == job_id)


async def wait_final(stack: Stack, job_id: str, timeout: float = 20.0) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in FINAL:
            return job
        assert asyncio.get_running_loop().time() < deadline, (
            f"{job_id} still {jobs_pb2.JobState.Name(job.state)}"
        )
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


async def make_retrying(stack: Stack, job_id: str, due_in_s: float) -> dict[str, Any]:
    """Take the job through one failed attempt (no Flickr call): RETRYING until now + due_in_s."""
    claim = await stack.store.claim(job_id, "worker-gone", 0, 30.0, expected_rev=0)
    assert claim is not None
    error = {"code": "FLICKR_UNAVAILABLE", "message": "503", "retryable": True}
    assert await stack.store.schedule_retry(job_id, claim.rev, error, now() + timedelta(seconds=due_in_s))
    return await doc_of(stack, job_id)


async def test_a_queued_job_whose_entry_was_lost_is_re_enqueued_and_runs_once(
    idle: Stack, redis: Any
) -> None:
    job_id = await submit(idle, n="lost")
    await drop_entry(idle, redis, job_id)

    report = await sweeper(idle, redis).sweep(full=False, min_age_s=0.0)

    assert [(r.job_id, r.status, r.where) for r in report.recovered] == [(job_id, jobs.QUEUED, "queue")]
    assert await entries_of(idle, redis, job_id) == 1
    doc = await doc_of(idle, job_id)
    assert await redis.sismember(keys.ACTIVE_TOKENS, doc["token_id_hash"])  # the mover will look there
    async with a_mover(idle):
        job = await wait_final(idle, job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert job.attempts == 1
    calls = [c for c in await sandbox_calls(idle, "flickr.test.echo") if c["params"].get("n") == "lost"]
    assert len(calls) == 1


async def test_a_running_read_whose_lease_ran_out_and_entry_is_gone_is_taken_over(
    idle: Stack, redis: Any
) -> None:
    job_id = await submit(idle, n="orphan")
    await drop_entry(idle, redis, job_id)
    claim = await idle.store.claim(job_id, "worker-that-died", 0, 0.05, expected_rev=0)  # never calls Flickr
    assert claim is not None
    await asyncio.sleep(0.1)

    report = await sweeper(idle, redis).sweep(full=False, min_age_s=0.0)

    assert [(r.job_id, r.status) for r in report.recovered] == [(job_id, jobs.RUNNING)]
    async with a_mover(idle):
        job = await wait_final(idle, job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert job.attempts == 2  # the dead run, then the takeover
    calls = [c for c in await sandbox_calls(idle, "flickr.test.echo") if c["params"].get("n") == "orphan"]
    assert len(calls) == 1


async def test_a_running_write_whose_lease_ran_out_is_never_resent(idle: Stack, redis: Any) -> None:
    # A write no Flickr read can prove (worker.reconcile): its takeover cannot check, so never sends.
    job_id = await submit(idle, "flickr.photos.addTags", photo_id="1", tags="t")
    await drop_entry(idle, redis, job_id)
    assert await idle.store.claim(job_id, "worker-that-died", 0, 0.05, expected_rev=0) is not None
    await asyncio.sleep(0.1)

    report = await sweeper(idle, redis).sweep(full=False, min_age_s=0.0)

    assert [r.job_id for r in report.recovered] == [job_id]
    async with a_mover(idle):
        job = await wait_final(idle, job_id)
    # It may have reached Flickr before its worker died: FlickrHub does not send a write twice.
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == "WRITE_OUTCOME_UNKNOWN"
    assert await sandbox_calls(idle, "flickr.photos.addTags") == []


async def test_only_what_redis_lost_is_re_enqueued_and_each_job_runs_once(idle: Stack, redis: Any) -> None:
    held = await submit(idle, n="held")
    lost = await submit(idle, n="lost")
    retry_held = await submit(idle, n="retry-held")
    retry_lost = await submit(idle, n="retry-lost")
    live_lease = await submit(idle, n="live-lease")
    for job_id in (lost, retry_held, retry_lost, live_lease):
        await drop_entry(idle, redis, job_id)
    # retry_held's delayed entry is where a worker leaves it; retry_lost's delayed entry is gone.
    doc = await make_retrying(idle, retry_held, due_in_s=0.5)
    entry, _ = lost_entry(doc, {})
    await redis.zadd(keys.DELAYED, {json.dumps(entry.to_fields(), sort_keys=True): 0})
    await make_retrying(idle, retry_lost, due_in_s=1.5)
    # A live worker holds live_lease (its lease is current): not the sweeper's business.
    assert await idle.store.claim(live_lease, "worker-alive", 0, 60.0, expected_rev=0) is not None

    sweep = sweeper(idle, redis)
    report = await sweep.sweep(full=False, min_age_s=0.0)

    assert {(r.job_id, r.status, r.where) for r in report.recovered} == {
        (lost, jobs.QUEUED, "queue"),
        (retry_lost, jobs.RETRYING, "delayed"),  # its backoff still holds
    }
    assert report.candidates == 4 and report.held == 2
    assert await entries_of(idle, redis, held) == 1
    assert await entries_of(idle, redis, lost) == 1
    assert await redis.zcard(keys.DELAYED) == 2
    # A second sweep finds them all held: nothing is enqueued twice.
    assert (await sweep.sweep(full=False, min_age_s=0.0)).recovered == []

    async with a_mover(idle):
        done = {j: await wait_final(idle, j) for j in (held, lost, retry_held, retry_lost)}
    assert {j: d.state for j, d in done.items()} == dict.fromkeys(done, jobs_pb2.JOB_STATE_COMPLETED)
    assert done[retry_lost].attempts == 2  # the failed attempt, then the recovered retry
    ran = [c["params"]["n"] for c in await sandbox_calls(idle, "flickr.test.echo") if "n" in c["params"]]
    assert sorted(ran) == ["held", "lost", "retry-held", "retry-lost"]
    assert (await doc_of(idle, live_lease))["status"] == jobs.RUNNING


async def test_a_duplicate_entry_runs_the_job_once_and_is_acknowledged(idle: Stack, redis: Any) -> None:
    job_id = await submit(idle, n="twice-queued")
    entry, _ = lost_entry(await doc_of(idle, job_id), {})
    pipe = redis.pipeline(transaction=False)
    tokenqueue.enqueue(pipe, entry)  # what a sweep racing a slow gateway append could leave
    await pipe.execute()
    assert await entries_of(idle, redis, job_id) == 2

    async with a_mover(idle):
        job = await wait_final(idle, job_id)

        async def work_drained() -> bool:
            stream = keys.work_stream("rest")
            pending = await redis.xpending(stream, keys.WORKER_GROUP)
            return int(pending["pending"]) == 0 and await redis.xlen(stream) == 0

        await eventually(work_drained)  # the duplicate found the job final and was acknowledged
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED
    assert job.attempts == 1
    calls = [
        c for c in await sandbox_calls(idle, "flickr.test.echo") if c["params"].get("n") == "twice-queued"
    ]
    assert len(calls) == 1


async def test_an_upload_whose_entry_was_lost_is_uploaded_once_from_its_stored_bytes(
    idle: Stack, redis: Any
) -> None:
    data = jpeg(300_000)
    resp = await idle.jobs.UploadJob(upload_messages(upload_job(title="kept in GridFS"), data))
    await drop_entry(idle, redis, resp.job_id)

    report = await sweeper(idle, redis).sweep(full=False, min_age_s=0.0)

    assert [r.job_id for r in report.recovered] == [resp.job_id]
    async with a_mover(idle):
        job = await wait_final(idle, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert len(idle.sandbox.uploads.uploads) == 1


async def test_a_wiped_redis_gets_one_full_sweep_then_the_marker(idle: Stack, redis: Any) -> None:
    fresh = await submit(idle, n="fresh")
    sweep = sweeper(idle, redis)
    assert not await sweep.marker_present()  # the fixture flushed Redis: nothing proves it whole

    report = await sweep.tick()  # the marker is gone: a full sweep, whatever the jobs' age

    assert report is not None and report.full
    assert report.recovered == []  # `fresh` is still in its stream
    assert await sweep.marker_present()
    assert await sweep.tick() is None  # marker present, periodic sweeps off (interval 0)

    await redis.flushall()
    report = await sweep.tick()
    assert report is not None and report.full
    assert [r.job_id for r in report.recovered] == [fresh]
    assert await redis.sismember(keys.ACTIVE_TOKENS, report.recovered[0].token)
    assert await redis.zscore(keys.OPEN_JOBS, fresh) is not None  # counted open again


async def test_one_sweep_at_a_time(idle: Stack, redis: Any) -> None:
    await redis.set(keys.recovery_lock(), "someone-else", px=5000)
    sweep = sweeper(idle, redis)
    with pytest.raises(SweepBusy, match="someone-else"):
        await sweep.sweep(full=True)
    assert await sweep.tick() is None  # the loop just waits for its next turn
    assert await redis.get(keys.recovery_lock()) == "someone-else"


def _store_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {"REDIS_URL": s.redis_url, "MONGO_URL": s.mongo_url, "MONGO_DB": s.mongo_db}


async def _cli(monkeypatch: pytest.MonkeyPatch, stack: Stack, *argv: str) -> tuple[int, str, str]:
    for name, value in _store_env(stack).items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli_main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_cli_recover_dry_run_lists_and_changes_nothing_then_recovers(
    idle: Stack, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sweeper(idle, redis).tick()  # a whole queue Redis: the marker is set, sweeps are periodic
    kept = await submit(idle, n="cli-kept")
    lost = await submit(idle, n="cli-lost")
    await drop_entry(idle, redis, lost)

    code, out, err = await _cli(monkeypatch, idle, "recover", "--dry-run", "--min-age", "0")
    assert (code, err) == (0, "")
    assert lost in out and kept not in out
    assert "would re-enqueue 1 job(s)" in out and "1 still in Redis" in out
    assert await entries_of(idle, redis, lost) == 0  # a dry run changes nothing

    code, out, err = await _cli(monkeypatch, idle, "recover", "--min-age", "0")
    assert (code, err) == (0, "")
    assert lost in out and "re-enqueued 1 job(s)" in out
    assert await entries_of(idle, redis, lost) == 1 and await entries_of(idle, redis, kept) == 1

    code, out, _ = await _cli(monkeypatch, idle, "recover", "--min-age", "0")
    assert "re-enqueued 0 job(s)" in out  # both held now

    code, out, _ = await _cli(monkeypatch, idle, "recover")  # default age (RECOVERY_MIN_AGE_S): too young
    assert "re-enqueued 0 job(s)" in out and "0 candidate(s)" in out

    await redis.set(keys.recovery_lock(), "mover-7", px=5000)
    code, out, err = await _cli(monkeypatch, idle, "recover", "--min-age", "0")
    assert code == 1 and "already running" in err and "mover-7" in err


async def test_cli_recover_as_a_process_after_a_flushall_runs_a_full_sweep(idle: Stack, redis: Any) -> None:
    job_id = await submit(idle, n="cli-flushed")
    await redis.flushall()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "recover",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **_store_env(idle)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert job_id in out.decode() and "full sweep" in out.decode()
    assert await entries_of(idle, redis, job_id) == 1
    assert await redis.exists(keys.QUEUE_MARKER)
