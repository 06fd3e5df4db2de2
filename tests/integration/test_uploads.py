"""Uploads and replaces: photo bytes over gRPC (client stream) and REST (multipart), through GridFS,
to the sandbox's upload endpoints, and back as a job with Flickr's photo id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from common import keys
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import jobs_pb2
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import bad_fields, result_of
from tests.helpers.uploads import chunks_of, upload_end, upload_messages

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}
MIB = 1024 * 1024
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def jpeg(size: int) -> bytes:
    """A photo the sandbox recognises as JPEG, random after the magic bytes."""
    return JPEG_HEAD + os.urandom(size - len(JPEG_HEAD))


def upload_job(**params: str) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, target=jobs_pb2.TARGET_UPLOAD, params=params)


def replace_job(**params: str) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, target=jobs_pb2.TARGET_REPLACE, params=params)


async def _stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, db: str, processes: int = 1, **overrides: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, db, **overrides)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=processes, workers=processes) as running:
        yield running


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    async for running in _stack(redis_url, cache_redis_url, mongo_url, mongo_db_name):
        yield running


@pytest_asyncio.fixture
async def idle_stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    """No mover and no worker: accepted jobs stay queued in their token stream."""
    async for running in _stack(redis_url, cache_redis_url, mongo_url, mongo_db_name, processes=0):
        yield running


@pytest_asyncio.fixture
async def small_photo_stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    """No mover and no worker, and a gateway that takes photos of at most 2 MiB."""
    async for running in _stack(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, processes=0, upload_max_photo_bytes=2 * MIB
    ):
        yield running


# An edge for photos of at most 64 KiB: its upload body limit (the photo and the job part) is cheap to pass.
SMALL_PHOTO = 64 * 1024
SMALL_BODY = Settings.from_env({}, upload_max_photo_bytes=SMALL_PHOTO).edge_upload_max_bytes


async def _edge(stack: Stack, max_photo: int | None = None) -> tuple[web.AppRunner, str]:
    overrides = {} if max_photo is None else {"upload_max_photo_bytes": max_photo}
    app = edge_app.create_app(Settings.from_env({}, **overrides), stack.channel)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def edge(stack: Stack) -> AsyncIterator[str]:
    runner, base = await _edge(stack)
    yield base
    await runner.cleanup()


@pytest_asyncio.fixture
async def small_edge(stack: Stack) -> AsyncIterator[str]:
    """An edge for photos of at most 64 KiB, so 413 is cheap to reach."""
    runner, base = await _edge(stack, max_photo=SMALL_PHOTO)
    yield base
    await runner.cleanup()


async def wait_final(stack: Stack, job_id: str, timeout: float = 20.0) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in FINAL:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}")
        await asyncio.sleep(0.05)


async def blob_counts(stack: Stack) -> tuple[int, int]:
    """(GridFS file documents, GridFS chunks) in the uploads bucket."""
    db = stack.mongo.db
    return await db["uploads.files"].count_documents({}), await db["uploads.chunks"].count_documents({})


async def wait_no_blobs(stack: Stack, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await blob_counts(stack) != (0, 0):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"blobs left behind: {await blob_counts(stack)}")
        await asyncio.sleep(0.05)


async def assert_nothing_written(stack: Stack, redis: Any) -> None:
    assert await stack.mongo.jobs.count_documents({}) == 0
    await wait_no_blobs(stack)
    streams = [k async for k in redis.scan_iter(match="fh:q:*")]
    assert [await redis.xlen(s) for s in streams] == [0] * len(streams)


def multipart(job: dict[str, Any] | None, photo: bytes | None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if job is not None:
        form.add_field("job", json.dumps(job), content_type="application/json")
    if photo is not None:
        form.add_field("photo", photo, filename="photo.jpg", content_type="image/jpeg")
    return form


# -- gRPC ------------------------------------------------------------------------------------


async def test_upload_in_several_chunks_completes_and_flickr_receives_exactly_the_bytes(stack: Stack) -> None:
    data = jpeg(2 * MIB + 12345)
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(title="Harbour ö", tags="sea boats"), data))
    assert resp.state == jobs_pb2.JOB_STATE_QUEUED

    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert job.method == "flickr.photos.upload"  # filled in from the target
    result = result_of(job)
    assert result["stat"] == "ok"
    arrived = stack.sandbox.uploads.uploads
    assert [u.photo_id for u in arrived] == [result["photoid"]]
    assert arrived[0].sha256 == hashlib.sha256(data).hexdigest()
    assert arrived[0].size == len(data)
    assert arrived[0].title == "Harbour ö"  # non-ASCII field, signed and verified
    async with aiohttp.ClientSession() as http, http.get(f"{stack.sandbox_url}/_sandbox/uploads") as listed:
        assert [u["sha256"] for u in await listed.json()] == [hashlib.sha256(data).hexdigest()]
    doc = await stack.mongo.jobs.find_one({"job_id": resp.job_id})
    assert doc is not None and doc["blob_size"] == len(data)
    assert doc["blob_sha256"] == hashlib.sha256(data).hexdigest()
    await wait_no_blobs(stack)  # removed once the job is final


async def test_the_call_log_and_the_job_never_hold_the_photo_bytes(stack: Stack) -> None:
    data = jpeg(300_000)
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(), data))
    await wait_final(stack, resp.job_id)
    (call,) = [c for c in stack.sandbox.calls if c.method == "flickr.photos.upload"]
    assert call.params["photo_sha256"] == hashlib.sha256(data).hexdigest()
    assert "photo" not in call.params
    assert all(len(v) < 200 for v in call.params.values())


async def test_the_stream_entry_carries_the_blob_id_never_the_bytes(idle_stack: Stack, redis: Any) -> None:
    data = jpeg(600_000)
    resp = await idle_stack.jobs.UploadJob(upload_messages(upload_job(title="t"), data, size=200_000))
    doc = await idle_stack.mongo.jobs.find_one({"job_id": resp.job_id})
    assert doc is not None
    entries = await redis.xrange(keys.token_stream(doc["token_id_hash"]))
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields["blob_id"] == doc["blob_id"]
    assert fields["target"] == "upload"
    raw = json.dumps(fields).encode()
    assert len(raw) < 4096
    assert data[100:164] not in raw
    assert (await blob_counts(idle_stack))[0] == 1


async def test_replace_answers_the_secrets_and_requires_a_photo_id(stack: Stack, redis: Any) -> None:
    first = await stack.jobs.UploadJob(upload_messages(upload_job(title="v1"), jpeg(50_000)))
    photo_id = result_of(await wait_final(stack, first.job_id))["photoid"]
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(70_000)

    resp = await stack.jobs.UploadJob(upload_messages(replace_job(photo_id=photo_id), data))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert job.method == "flickr.photos.replace"
    result = result_of(job)
    assert result["photoid"] == photo_id
    assert result["secret"] and result["originalsecret"]
    replaced = stack.sandbox.uploads.uploads[-1]
    assert (replaced.kind, replaced.photo_id, replaced.sha256) == (
        "replace",
        photo_id,
        hashlib.sha256(data).hexdigest(),
    )
    await wait_no_blobs(stack)

    await stack.mongo.jobs.delete_many({})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.UploadJob(upload_messages(replace_job(title="x"), data))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"params[photo_id]", "params[title]"}
    await assert_nothing_written(stack, redis)


async def test_replace_of_an_unknown_photo_fails_with_flickrs_code(stack: Stack) -> None:
    resp = await stack.jobs.UploadJob(upload_messages(replace_job(photo_id="12340"), jpeg(10_000)))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.flickr_code, job.error.retryable) == ("FLICKR_ERROR", 1, False)


async def test_async_upload_follows_the_ticket_until_it_completes(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.sandbox_url}/_sandbox/uploads/tickets", json={"delay_ms": 600}) as set_delay,
    ):
        assert set_delay.status == 200
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(**{"async": "1"}), jpeg(40_000)))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    result = result_of(job)
    (arrived,) = stack.sandbox.uploads.uploads
    assert result["ticketid"] == arrived.ticket_id
    assert result["photoid"] == arrived.photo_id
    polls = [c for c in stack.sandbox.calls if c.method == "flickr.photos.upload.checkTickets"]
    assert len(polls) >= 2  # pending at least once, then complete
    assert all(c.params["tickets"] == arrived.ticket_id for c in polls)


async def test_an_async_ticket_that_fails_fails_the_job_without_a_retry(stack: Stack) -> None:
    stack.sandbox.uploads.ticket_delay_s, stack.sandbox.uploads.ticket_fail = 0.1, True
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(**{"async": "1"}), jpeg(40_000)))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == "UPLOAD_TICKET_FAILED"
    assert job.attempts == 1
    await wait_no_blobs(stack)


async def test_flickr_refusing_the_file_fails_the_job_permanently_with_its_code(stack: Stack) -> None:
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(), b"plain text, not an image"))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.flickr_code, job.error.retryable) == ("FLICKR_ERROR", 5, False)
    assert job.attempts == 1
    assert stack.sandbox.uploads.uploads == []
    await wait_no_blobs(stack)


async def test_a_duplicate_keeps_flickrs_duplicate_photo_id(stack: Stack) -> None:
    data = jpeg(20_000)
    first = await stack.jobs.UploadJob(upload_messages(upload_job(dedup_check="1"), data))
    photo_id = result_of(await wait_final(stack, first.job_id))["photoid"]
    second = await stack.jobs.UploadJob(upload_messages(upload_job(dedup_check="1"), data))
    job = await wait_final(stack, second.job_id)
    assert (job.state, job.error.flickr_code) == (jobs_pb2.JOB_STATE_FAILED, 9)
    assert photo_id in job.error.message
    doc = await stack.mongo.jobs.find_one({"job_id": second.job_id})
    assert doc is not None and doc["error"]["duplicate_photo_id"] == photo_id


async def test_a_503_from_flickr_is_retried_and_the_upload_then_succeeds(stack: Stack) -> None:
    stack.sandbox.add_fault(method="flickr.photos.upload", kind="http_status", status=503, times=1)
    data = jpeg(100_000)
    resp = await stack.jobs.UploadJob(upload_messages(upload_job(), data))
    job = await wait_final(stack, resp.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert job.attempts == 2
    (arrived,) = stack.sandbox.uploads.uploads
    assert arrived.sha256 == hashlib.sha256(data).hexdigest()  # the retry streamed the blob again
    await wait_no_blobs(stack)


async def test_cancel_removes_the_blob(idle_stack: Stack) -> None:
    resp = await idle_stack.jobs.UploadJob(upload_messages(upload_job(), jpeg(300_000)))
    assert (await blob_counts(idle_stack))[0] == 1
    job = await idle_stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=resp.job_id))
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert await blob_counts(idle_stack) == (0, 0)


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        pytest.param([], "job", id="empty-stream"),
        pytest.param([jobs_pb2.UploadJobRequest(chunk=b"x")], "job", id="chunk-first"),
        pytest.param([jobs_pb2.UploadJobRequest(job=upload_job()), upload_end(b"")], "chunk", id="no-photo"),
        pytest.param([jobs_pb2.UploadJobRequest(job=upload_job())], "end", id="nothing-after-job"),
        pytest.param(
            [jobs_pb2.UploadJobRequest(job=upload_job()), jobs_pb2.UploadJobRequest(chunk=b"")],
            "chunk",
            id="empty-photo",
        ),
        pytest.param(
            [
                jobs_pb2.UploadJobRequest(job=upload_job()),
                jobs_pb2.UploadJobRequest(chunk=JPEG_HEAD * 30_000),
                jobs_pb2.UploadJobRequest(chunk=b"x" * (MIB + 1)),
            ],
            "chunk",
            id="chunk-over-1mib",
        ),
        pytest.param(
            [jobs_pb2.UploadJobRequest(job=upload_job()), jobs_pb2.UploadJobRequest(job=upload_job())],
            "job",
            id="second-job",
        ),
        pytest.param(
            [jobs_pb2.UploadJobRequest(job=upload_job(format="json"))], "params[format]", id="reserved"
        ),
        pytest.param(
            [jobs_pb2.UploadJobRequest(job=upload_job(farm="1"))], "params[farm]", id="unknown-param"
        ),
        pytest.param(
            [jobs_pb2.UploadJobRequest(job=upload_job(is_public="yes"))], "params[is_public]", id="value"
        ),
        pytest.param(
            [
                jobs_pb2.UploadJobRequest(
                    job=jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo")
                )
            ],
            "target",
            id="rest-target",
        ),
        pytest.param(
            [
                jobs_pb2.UploadJobRequest(
                    job=jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.photos.search", target=jobs_pb2.TARGET_UPLOAD
                    )
                )
            ],
            "method",
            id="wrong-method",
        ),
    ],
)
async def test_a_refused_upload_leaves_no_job_no_blob_and_no_stream_entry(
    stack: Stack, redis: Any, messages: list[jobs_pb2.UploadJobRequest], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.UploadJob(iter(messages))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert field in bad_fields(err.value)
    await assert_nothing_written(stack, redis)


async def test_a_photo_over_the_limit_is_refused_and_its_written_chunks_removed(
    small_photo_stack: Stack, redis: Any
) -> None:
    stack = small_photo_stack  # UPLOAD_MAX_PHOTO_BYTES = 2 MiB (100 MiB by default)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.UploadJob(upload_messages(upload_job(), jpeg(3 * MIB)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"chunk"}
    assert "larger than 2097152 bytes" in (err.value.details() or "")
    await assert_nothing_written(stack, redis)
    # Up to the limit is a photo like any other.
    accepted = await stack.jobs.UploadJob(upload_messages(upload_job(), jpeg(2 * MIB)))
    assert accepted.job_id


async def test_an_unknown_user_is_refused_before_any_byte_is_stored(stack: Stack, redis: Any) -> None:
    job = jobs_pb2.SubmitJobRequest(user_id="nobody", target=jobs_pb2.TARGET_UPLOAD)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.UploadJob(upload_messages(job, jpeg(10_000)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await assert_nothing_written(stack, redis)


async def test_a_client_that_gives_up_mid_stream_leaves_nothing_behind(stack: Stack, redis: Any) -> None:
    sent = asyncio.Event()

    async def messages() -> AsyncIterator[jobs_pb2.UploadJobRequest]:
        yield jobs_pb2.UploadJobRequest(job=upload_job())
        for piece in chunks_of(jpeg(2 * MIB)):
            yield jobs_pb2.UploadJobRequest(chunk=piece)
        sent.set()
        await asyncio.Event().wait()  # never finishes the stream

    call = stack.jobs.UploadJob(messages())
    await asyncio.wait_for(sent.wait(), 10)
    deadline = asyncio.get_running_loop().time() + 5
    while (await blob_counts(stack))[1] == 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)  # the gateway has started writing chunks
    call.cancel()
    await assert_nothing_written(stack, redis)


# -- the `end` message: a stream proves it is whole -------------------------------------------


async def stored(stack: Stack, redis: Any) -> tuple[int, int, int, int]:
    """(job documents, GridFS files, GridFS chunks, token stream entries)."""
    files, chunks = await blob_counts(stack)
    streams = [k async for k in redis.scan_iter(match="fh:q:*")]
    entries = sum([await redis.xlen(s) for s in streams])
    return await stack.mongo.jobs.count_documents({}), files, chunks, entries


async def wait_stored(stack: Stack, redis: Any, expected: tuple[int, int, int, int]) -> None:
    """Wait (briefly) until exactly `expected` is stored: a cleanup may still be on its way."""
    deadline = asyncio.get_running_loop().time() + 5
    while (now := await stored(stack, redis)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stored {now}, expected {expected}")
        await asyncio.sleep(0.05)


async def kept_upload(stack: Stack, redis: Any) -> tuple[int, int, int, int]:
    """Accept one upload (it stays queued on an idle stack): refusals are counted against non-zero state."""
    await stack.jobs.UploadJob(upload_messages(upload_job(title="kept"), jpeg(600_000)))
    before = await stored(stack, redis)
    assert before == (1, 1, 3, 1)
    return before


async def test_a_stream_that_stops_without_end_is_refused_and_its_stored_chunks_removed(
    idle_stack: Stack, redis: Any
) -> None:
    before = await kept_upload(idle_stack, redis)

    async def cut_short() -> AsyncIterator[jobs_pb2.UploadJobRequest]:
        yield jobs_pb2.UploadJobRequest(job=upload_job())
        for piece in chunks_of(jpeg(2 * MIB)):
            yield jobs_pb2.UploadJobRequest(chunk=piece)
        deadline = asyncio.get_running_loop().time() + 5
        while (await blob_counts(idle_stack))[1] == before[2]:  # until the gateway has stored chunks
            assert asyncio.get_running_loop().time() < deadline, "the gateway stored no chunk"
            await asyncio.sleep(0.02)
        # Then a clean end of the stream without `end`: what a client's cancel can look like to the server.

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await idle_stack.jobs.UploadJob(cut_short())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"end"}
    assert "ended without `end`" in (err.value.details() or "")
    await wait_stored(idle_stack, redis, before)


PHOTO = jpeg(2 * MIB + 4321)
_JOB = jobs_pb2.UploadJobRequest(job=upload_job())
_CHUNKS = [jobs_pb2.UploadJobRequest(chunk=piece) for piece in chunks_of(PHOTO)]


def _end(size: int, sha256: bytes) -> jobs_pb2.UploadJobRequest:
    return jobs_pb2.UploadJobRequest(end=jobs_pb2.UploadEnd(size=size, sha256=sha256))


@pytest.mark.parametrize(
    ("messages", "fields"),
    [
        pytest.param(
            [_JOB, *_CHUNKS, _end(len(PHOTO) - 1, hashlib.sha256(PHOTO).digest())],
            {"end.size"},
            id="size-short",
        ),
        pytest.param(
            [_JOB, *_CHUNKS, _end(len(PHOTO) + MIB, hashlib.sha256(PHOTO).digest())],
            {"end.size"},
            id="size-long",
        ),
        pytest.param(
            [_JOB, *_CHUNKS, _end(len(PHOTO), hashlib.sha256(PHOTO[:-1]).digest())],
            {"end.sha256"},
            id="digest-of-other-bytes",
        ),
        pytest.param(
            [_JOB, *_CHUNKS, _end(len(PHOTO), hashlib.sha256(PHOTO).hexdigest().encode())],
            {"end.sha256"},
            id="hex-digest",
        ),
        pytest.param([_JOB, *_CHUNKS, _end(len(PHOTO), b"")], {"end.sha256"}, id="no-digest"),
        pytest.param(
            [_JOB, *_CHUNKS[:-1], upload_end(PHOTO)], {"end.size", "end.sha256"}, id="last-chunk-lost"
        ),
        pytest.param([_JOB, *_CHUNKS, upload_end(PHOTO), _CHUNKS[0]], {"end"}, id="chunk-after-end"),
        pytest.param([_JOB, *_CHUNKS, upload_end(PHOTO), upload_end(PHOTO)], {"end"}, id="end-twice"),
        pytest.param([_JOB, upload_end(PHOTO), *_CHUNKS], {"end"}, id="end-first"),
    ],
)
async def test_an_end_that_does_not_match_the_stream_is_refused_and_nothing_is_stored(
    idle_stack: Stack, redis: Any, messages: list[jobs_pb2.UploadJobRequest], fields: set[str]
) -> None:
    before = await kept_upload(idle_stack, redis)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await idle_stack.jobs.UploadJob(iter(messages))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert bad_fields(err.value) == fields
    await wait_stored(idle_stack, redis, before)


@pytest.mark.parametrize("cancel_after", ["first-chunks-stored", "every-chunk-sent"])
async def test_a_client_cancel_before_end_stores_nothing(
    idle_stack: Stack, redis: Any, cancel_after: str
) -> None:
    before = await kept_upload(idle_stack, redis)
    data = jpeg(6 * MIB)
    sent = asyncio.Event()

    async def messages() -> AsyncIterator[jobs_pb2.UploadJobRequest]:
        yield jobs_pb2.UploadJobRequest(job=upload_job())
        for i, piece in enumerate(chunks_of(data)):
            yield jobs_pb2.UploadJobRequest(chunk=piece)
            if i == 1 and cancel_after == "first-chunks-stored":
                break
        sent.set()
        await asyncio.Event().wait()  # `end` never comes: the client cancels instead

    call = idle_stack.jobs.UploadJob(messages())
    await asyncio.wait_for(sent.wait(), 10)
    deadline = asyncio.get_running_loop().time() + 5
    while (await blob_counts(idle_stack))[1] == before[2]:  # the gateway has stored chunks of this photo
        assert asyncio.get_running_loop().time() < deadline, "the gateway stored no chunk"
        await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_stored(idle_stack, redis, before)
    await asyncio.sleep(0.3)  # and it stays that way: no write lands after the cleanup
    assert await stored(idle_stack, redis) == before


async def test_submit_job_points_uploads_to_upload_job(stack: Stack, redis: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.jobs.SubmitJob(upload_job())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UploadJob" in (err.value.details() or "")
    await assert_nothing_written(stack, redis)


# -- REST (multipart through the edge) -------------------------------------------------------


async def test_rest_multipart_upload_completes_with_the_exact_bytes(stack: Stack, edge: str) -> None:
    data = jpeg(3 * MIB + 7)
    job = {"user_id": DEMO_USER, "target": "TARGET_UPLOAD", "params": {"title": "via REST"}, "unknown": 1}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge}/v1/uploads", data=multipart(job, data)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["state"] == "JOB_STATE_QUEUED"
    done = await wait_final(stack, body["job_id"])
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED, done.error
    (arrived,) = stack.sandbox.uploads.uploads
    assert (arrived.sha256, arrived.title) == (hashlib.sha256(data).hexdigest(), "via REST")
    await wait_no_blobs(stack)


async def test_rest_answers_gateway_refusals_with_the_edge_error_format(
    stack: Stack, edge: str, redis: Any
) -> None:
    job = {"user_id": DEMO_USER, "target": "TARGET_REPLACE"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge}/v1/uploads", data=multipart(job, jpeg(5000))) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    violations = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["field_violations"][0]["field"] == "params[photo_id]"
    await assert_nothing_written(stack, redis)


@pytest.mark.parametrize(
    ("job", "photo", "fragment"),
    [
        pytest.param(None, b"\xff\xd8\xff", "first part must be `job`", id="no-job-part"),
        pytest.param(
            {"user_id": DEMO_USER, "target": "TARGET_UPLOAD"}, None, "`photo` file part", id="no-photo"
        ),
    ],
)
async def test_rest_missing_parts_are_a_400(
    stack: Stack, edge: str, redis: Any, job: dict[str, Any] | None, photo: bytes | None, fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge}/v1/uploads", data=multipart(job, photo)) as resp,
    ):
        assert resp.status == 400
        assert fragment in (await resp.json())["message"]
    await assert_nothing_written(stack, redis)


async def test_rest_job_part_that_is_not_json_is_a_400(stack: Stack, edge: str) -> None:
    form = aiohttp.FormData()
    form.add_field("job", "{not json", content_type="application/json")
    form.add_field("photo", b"\xff\xd8\xff", filename="p.jpg")
    async with aiohttp.ClientSession() as http, http.post(f"{edge}/v1/uploads", data=form) as resp:
        assert resp.status == 400
        assert "`job` part" in (await resp.json())["message"]


async def test_rest_upload_of_json_is_a_415(stack: Stack, edge: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge}/v1/uploads", json={"user_id": DEMO_USER}) as resp,
    ):
        assert resp.status == 415
        assert (await resp.json())["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_rest_wrong_verb_on_uploads_is_a_405_with_allow(stack: Stack, edge: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{edge}/v1/uploads") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"


async def test_rest_oversize_body_is_a_413_from_content_length_without_reading_it(
    stack: Stack, small_edge: str, redis: Any
) -> None:
    host, port = small_edge.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000000\r\n\r\n--b\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()
    await assert_nothing_written(stack, redis)


async def test_rest_streamed_body_over_the_limit_is_a_413_while_reading(
    stack: Stack, small_edge: str, redis: Any
) -> None:
    job = json.dumps({"user_id": DEMO_USER, "target": "TARGET_UPLOAD"}).encode()
    head = b'--b\r\nContent-Disposition: form-data; name="job"\r\n\r\n' + job + b"\r\n"
    head += b'--b\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n\r\n' + JPEG_HEAD

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield head
        for _ in range(SMALL_BODY // (16 * 1024) + 2):
            yield os.urandom(16 * 1024)
            await asyncio.sleep(0.001)
        yield b"\r\n--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{small_edge}/v1/uploads", data=body(), headers=headers) as resp,
        ):
            assert resp.status == 413
            assert f"larger than {SMALL_BODY}" in (await resp.json())["message"]
    except aiohttp.ClientOSError:  # pragma: no cover - the server may close before the upload ends
        pass
    await assert_nothing_written(stack, redis)
