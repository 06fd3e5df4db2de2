"""UploadJob: an upload or replace job whose photo arrives as a client stream of chunks.

Contract (jobs.proto `UploadJobRequest`): the first message carries `job`
(validated like SubmitJob, plus: target TARGET_UPLOAD or TARGET_REPLACE; method
`flickr.photos.upload` / `flickr.photos.replace`, filled in when empty; params
only Flickr's upload fields, and `photo_id` is required for a replace); the next
messages carry a `chunk` of at most 1 MiB, UPLOAD_MAX_PHOTO_BYTES (100 MiB) in all; the last one carries
`end`, the photo's size and SHA-256, and nothing may follow it. Each of those
rules answers INVALID_ARGUMENT with a field violation (`job`, `chunk`, `end`,
`end.size`, `end.sha256`, `params[...]`): an oversize photo is a bad request, not
a quota.

`end` is what makes the stream self-verifying: gRPC can show a client's cancel to
the server as a clean end of the stream (seen at ~97 MiB: a job was created with
93 MiB of the photo). A stream that ends without `end`, or whose `end` disagrees
with the bytes that arrived (counted and hashed while they stream in, no second
pass), is refused before the blob is published.

The photo is written to the blob store as it streams in, then the job document
(with blob_id, blob_size, blob_sha256), then the token stream entry (carrying
only the blob id). Any failure, refusal or cancel on the way removes what was
written, and the cleanup runs to its end even if the call is cancelled again: a
refused upload leaves no job, no blob (no chunk) and no stream entry.
Backpressure (`JobServicer.admit`) is checked as soon as the first message
validates, before a byte of the photo is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from pymongo.errors import PyMongoError

from common import jobs, telemetry
from common.blobs import BlobInfo, BlobStore, BlobWriter
from common.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from common.logs import job_id_var
from flickrhub.v1 import jobs_pb2
from gateway import identity, metrics, validation

if TYPE_CHECKING:
    from gateway.jobs_servicer import JobServicer

log = logging.getLogger(__name__)

# Initial metadata sent once the job is accepted; the REST edge streams the photo only after it.
GO_AHEAD_KEY = "x-fh-upload-go-ahead"
MAX_CHUNK_BYTES = 1024 * 1024
SHA256_BYTES = 32
METHODS = {"upload": "flickr.photos.upload", "replace": "flickr.photos.replace"}
_BINARY = frozenset({"0", "1"})
# Flickr's upload and replace fields (FLICKR-API.md §3) and the values each takes.
UPLOAD_PARAMS: dict[str, frozenset[str] | None] = {
    "title": None,
    "description": None,
    "tags": None,
    "is_public": _BINARY,
    "is_friend": _BINARY,
    "is_family": _BINARY,
    "safety_level": frozenset({"1", "2", "3"}),
    "content_type": frozenset({"1", "2", "3"}),
    "hidden": frozenset({"1", "2"}),
    "async": _BINARY,
    "dedup_check": frozenset({"1", "2"}),
}
REPLACE_PARAMS: dict[str, frozenset[str] | None] = {"photo_id": None, "async": _BINARY}


def prepare(job: jobs_pb2.SubmitJobRequest) -> tuple[jobs_pb2.SubmitJobRequest, str]:
    """The job with its method filled in, and its target name; InvalidArgument listing every bad field."""
    job = _copy(job)
    target = jobs.target_from_proto(job.target) if job.target in jobs_pb2.Target.values() else ""
    if target in METHODS and not job.method:
        job.method = METHODS[target]
    bad = validation.submit_violations(job)
    bad += upload_violations(job, target)
    if bad:
        raise InvalidArgument("invalid upload job: " + "; ".join(v.field for v in bad), bad)
    return job, target


def upload_violations(job: jobs_pb2.SubmitJobRequest, target: str) -> list[FieldViolation]:
    """What an upload or replace job needs beyond SubmitJob's rules."""
    if target not in METHODS:
        return [FieldViolation("target", "UploadJob takes TARGET_UPLOAD or TARGET_REPLACE")]
    bad: list[FieldViolation] = []
    if job.method != METHODS[target]:
        bad.append(FieldViolation("method", f"must be {METHODS[target]} (or empty) for this target"))
    allowed = UPLOAD_PARAMS if target == "upload" else REPLACE_PARAMS
    for key, value in job.params.items():
        if key not in allowed:
            if validation.PARAM_KEY_RE.fullmatch(key) and key not in validation.RESERVED_PARAMS:
                fields = ", ".join(sorted(allowed))
                bad.append(FieldViolation(f"params[{key}]", f"not a Flickr {target} field ({fields})"))
            continue  # submit_violations already reported it
        values = allowed[key]
        if values is not None and value not in values:
            bad.append(FieldViolation(f"params[{key}]", f"one of {sorted(values)}"))
    if target == "replace":
        photo_id = job.params.get("photo_id", "")
        if not (photo_id.isdigit() and len(photo_id) <= 32):
            bad.append(FieldViolation("params[photo_id]", "required for a replace: a Flickr photo id"))
    return bad


def _copy(job: jobs_pb2.SubmitJobRequest) -> jobs_pb2.SubmitJobRequest:
    out = jobs_pb2.SubmitJobRequest()
    out.CopyFrom(job)
    return out


def end_violations(end: jobs_pb2.UploadEnd | None, size: int, digest: bytes) -> list[FieldViolation]:
    """What is wrong with a finished stream: no `end`, an `end` that disagrees with the bytes, no bytes."""
    bad: list[FieldViolation] = []
    if end is None:
        bad.append(FieldViolation("end", "required as the last message: the photo's size and SHA-256"))
    else:
        if end.size != size:
            bad.append(FieldViolation("end.size", f"{end.size} bytes announced, {size} received"))
        if len(end.sha256) != SHA256_BYTES:
            bad.append(FieldViolation("end.sha256", f"the {SHA256_BYTES}-byte SHA-256 digest of the photo"))
        elif end.sha256 != digest:
            bad.append(FieldViolation("end.sha256", "does not match the SHA-256 of the bytes received"))
    if size == 0:
        bad.append(FieldViolation("chunk", "the photo has no bytes"))
    return bad


async def _receive(
    writer: BlobWriter, messages: AsyncIterator[jobs_pb2.UploadJobRequest], max_photo_bytes: int
) -> BlobInfo:
    end: jobs_pb2.UploadEnd | None = None
    async for message in messages:
        part = message.WhichOneof("part")
        if end is not None:
            raise InvalidArgument(
                "nothing may follow `end` in an upload stream",
                [FieldViolation("end", "must be the last message")],
            )
        if part == "end":
            end = message.end
            continue
        if part != "chunk":
            raise InvalidArgument(
                "only the first UploadJobRequest carries `job`; then `chunk` messages, then `end`",
                [FieldViolation("job", "only in the first message")],
            )
        size = len(message.chunk)
        if size > MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"chunk of {size} bytes; at most {MAX_CHUNK_BYTES} per message",
                [FieldViolation("chunk", f"at most {MAX_CHUNK_BYTES} bytes per message")],
            )
        if writer.size + size > max_photo_bytes:
            raise InvalidArgument(
                f"photo larger than {max_photo_bytes} bytes",
                [FieldViolation("chunk", f"the photo is at most {max_photo_bytes} bytes in all")],
            )
        await writer.write(message.chunk)
    bad = end_violations(end, writer.size, writer.digest())
    if bad:
        # Checked before close(): a photo that does not match is never published, only aborted.
        if end is None:
            what = "the upload stream ended without `end` (the photo may be incomplete)"
        elif any(v.field.startswith("end") for v in bad):
            what = "the photo received does not match the upload's `end`"
        else:
            what = "the photo is empty"
        raise InvalidArgument(f"{what}: " + "; ".join(v.field for v in bad), bad)
    return await writer.close()


async def undo(cleanup: Awaitable[object]) -> None:
    """Run a cleanup to its end even if the call is cancelled (again) meanwhile, then pass the cancel on."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # a cancel of this wait leaves the cleanup running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the cancel wins over a failed cleanup
        raise asyncio.CancelledError
    task.result()  # its own error, if any


async def accept(
    servicer: JobServicer,
    blobs: BlobStore,
    messages: AsyncIterator[jobs_pb2.UploadJobRequest],
    context: grpc.aio.ServicerContext[Any, Any],
) -> jobs_pb2.SubmitJobResponse:
    """Validate the job, store the photo, record and enqueue the job; undo everything on failure."""
    first = await anext(messages, None)
    if first is None or first.WhichOneof("part") != "job":
        raise InvalidArgument(
            "the first UploadJobRequest must carry `job`",
            [FieldViolation("job", "required in the first message")],
        )
    job, target = prepare(first.job)
    identity.require_user(job.user_id)
    job_id = uuid.uuid4().hex
    client = identity.client_id()
    await servicer.admit(client, [job_id])  # backpressure, before a byte of the photo is stored
    try:
        response = await _store_and_submit(servicer, blobs, messages, context, job, target, job_id)
    except BaseException:
        await undo(servicer.release(client, [job_id]))
        raise
    if response.job_id != job_id:  # a duplicate: the first job already counts
        await servicer.release(client, [job_id])
    return response


async def _store_and_submit(
    servicer: JobServicer,
    blobs: BlobStore,
    messages: AsyncIterator[jobs_pb2.UploadJobRequest],
    context: grpc.aio.ServicerContext[Any, Any],
    job: jobs_pb2.SubmitJobRequest,
    target: str,
    job_id: str,
) -> jobs_pb2.SubmitJobResponse:
    await servicer.check_callback(job.callback_url)
    token = await servicer._tokens.get(job.user_id)
    if token is None:
        raise NotFound(f"no Flickr token for user_id {job.user_id!r}", reason="TOKEN_NOT_FOUND")
    job_id_var.set(job_id)
    # "Accepted, send the photo": the REST edge waits for this before streaming a byte, so a refusal
    # above reaches it intact (a client still writing when the call ends sees only grpc's INTERNAL).
    await context.send_initial_metadata(((GO_AHEAD_KEY, "1"),))
    writer = blobs.writer(job_id, {"job_id": job_id, "user_id": job.user_id, "target": target})
    try:
        info = await _receive(writer, messages, servicer._settings.upload_max_photo_bytes)
    except BaseException as exc:  # refused, failed or cancelled mid-stream: nothing may remain
        with contextlib.suppress(PyMongoError):
            await undo(writer.abort())
        if isinstance(exc, PyMongoError):
            raise Unavailable("blob store unavailable; retry shortly") from exc
        raise
    try:
        return await _submit(servicer, job, target, token.token_id_hash, job_id, info, context)
    except BaseException:
        with contextlib.suppress(PyMongoError):
            await undo(blobs.delete(info.blob_id))
        raise


async def _submit(
    servicer: JobServicer,
    job: jobs_pb2.SubmitJobRequest,
    target: str,
    token: str,
    job_id: str,
    info: BlobInfo,
    context: grpc.aio.ServicerContext[Any, Any],
) -> jobs_pb2.SubmitJobResponse:
    idem_key = job.idempotency_key or _metadata(context, "x-idempotency-key")
    if idem_key:
        # The photo's digest is part of the payload: the same key with other bytes is a different request.
        keyed = _copy(job)
        keyed.params["photo"] = info.sha256  # `photo` is reserved, so it cannot clash with a client param
        existing = await servicer._reserve_idempotency(keyed, token, idem_key, job_id)
        if existing is not None:
            metrics.SUBMITTED.labels(outcome="deduplicated").inc()
            await servicer._blobs.delete(info.blob_id)
            return (await servicer.responses([existing]))[0]
    with telemetry.span(telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER) as span:
        span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
        span.set_attribute(telemetry.ATTR_METHOD, job.method)
        span.set_attribute(telemetry.ATTR_TARGET, target)
        span.set_attribute(telemetry.ATTR_TOKEN, token)
        trace_id = telemetry.current_trace_id()
        entry = jobs.JobEntry(
            job_id=job_id,
            token=token,
            user_id=job.user_id,
            method=job.method,
            target=target,
            params=dict(job.params),
            max_attempts=servicer._settings.worker_max_attempts,
            priority=jobs.priority_from_proto(job.priority),
            cache_bypass=True,
            has_callback=bool(job.callback_url),
            enqueued_ms=int(time.time() * 1000),
            trace=dict(telemetry.inject_fields({})),
            blob_id=info.blob_id,
            client_id=identity.client_id(),
        )
        extra = {"blob_id": info.blob_id, "blob_size": info.size, "blob_sha256": info.sha256}
        try:
            await servicer.commit(servicer.document(job, entry, trace_id, extra), entry)
        except BaseException:
            with contextlib.suppress(PyMongoError):  # a cancelled commit may have written first
                # Revision 0: as accepted, untouched by any worker (the job_id_rev_unique index).
                await undo(servicer._store.jobs.delete_one({"job_id": job_id, "rev": 0}))
            if idem_key:
                await undo(servicer._release_idempotency(token, idem_key, job_id))
            raise
    metrics.SUBMITTED.labels(outcome="accepted").inc()
    log.info("upload accepted", extra={"job_id": job_id, "method": job.method, "size": info.size})
    return jobs_pb2.SubmitJobResponse(job_id=job_id, state=jobs_pb2.JOB_STATE_QUEUED, trace_id=trace_id)


def _metadata(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""
