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
Backpressure is checked as soon as the first message validates, before a byte of
the photo is stored. Accepting the job is gateway.acceptance's (`Acceptance.upload`);
this module reads the stream: the first message (`first_job`, `prepare`) and the
photo after it (`PhotoStream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from common import jobs
from common.blobs import BlobInfo, BlobWriter
from common.errors import FieldViolation, InvalidArgument
from flickrhub.v1 import jobs_pb2
from gateway import validation

# Initial metadata sent once the job is accepted; the REST edge streams the photo only after it.
GO_AHEAD_KEY = "x-fh-upload-go-ahead"
MAX_CHUNK_BYTES = 1024 * 1024
SHA256_BYTES = 32
METHODS = {"upload": "flickr.photos.upload", "replace": "flickr.photos.replace"}
_BINARY = frozenset({"0", "1"})
# Flickr's upload and replace fields (docs/flickr-api.md §3) and the values each takes.
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


async def first_job(messages: AsyncIterator[jobs_pb2.UploadJobRequest]) -> jobs_pb2.SubmitJobRequest:
    """The job the first message carries; INVALID_ARGUMENT when it carries anything else (or nothing)."""
    first = await anext(messages, None)
    if first is None or first.WhichOneof("part") != "job":
        raise InvalidArgument(
            "the first UploadJobRequest must carry `job`",
            [FieldViolation("job", "required in the first message")],
        )
    return first.job


class PhotoStream:
    """The photo the rest of an UploadJob stream carries (gateway.acceptance.Photo)."""

    def __init__(
        self,
        messages: AsyncIterator[jobs_pb2.UploadJobRequest],
        context: grpc.aio.ServicerContext[Any, Any],
        max_photo_bytes: int,
    ) -> None:
        self._messages = messages
        self._context = context
        self._max_photo_bytes = max_photo_bytes

    async def go_ahead(self) -> None:
        """Initial metadata "accepted, send the photo" (GO_AHEAD_KEY)."""
        await self._context.send_initial_metadata(((GO_AHEAD_KEY, "1"),))

    async def receive(self, writer: BlobWriter) -> BlobInfo:
        """Every chunk into `writer`, checked against `end`; the published blob."""
        return await _receive(writer, self._messages, self._max_photo_bytes)
