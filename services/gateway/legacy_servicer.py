"""LegacyService: the original FlickrHub API's job routes, answered by JobService's own logic.

Nothing is re-implemented: a legacy submission becomes a SubmitJobRequest and goes
through `JobServicer.submit` (validation, callback URL checks, idempotency,
recording, enqueueing), marked `api: "legacy"` so its webhook uses the original's
payload; a status request is `GetJob` translated into the original's vocabulary
(`common.legacy`). The REST edge wraps both answers in the original envelope.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf import struct_pb2

from common import jobs, legacy
from common.errors import FieldViolation, InvalidArgument, NotFound
from flickrhub.v1 import jobs_pb2, legacy_pb2, legacy_pb2_grpc
from gateway import validation
from gateway.jobs_servicer import JobServicer

_TARGETS = {"": jobs_pb2.TARGET_REST, "rest": jobs_pb2.TARGET_REST}
_PHOTO_TARGETS = frozenset({"upload", "replace"})


def _param_text(value: struct_pb2.Value) -> str | None:
    """A Struct value as the string Flickr gets (None for values Flickr has no form for)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "1" if value.bool_value else "0"  # Flickr's booleans are 1/0
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number == int(number) and abs(number) < 2**53:
            return str(int(number))
        return repr(number)
    return None


def to_submit_request(request: legacy_pb2.LegacySubmitRequest) -> jobs_pb2.SubmitJobRequest:
    """The SubmitJobRequest a legacy submission stands for; InvalidArgument for what has no equivalent."""
    bad: list[FieldViolation] = []
    params: dict[str, str] = {}
    for key, value in request.params.fields.items():
        text = _param_text(value)
        if text is None:
            bad.append(FieldViolation(f"params[{key[:64]}]", "a string, number or boolean"))
        else:
            params[key] = text
    target = request.target.strip().lower()
    if target in _PHOTO_TARGETS:
        bad.append(FieldViolation("target", f"{target} jobs carry a photo: use POST /v1/uploads"))
    elif target not in _TARGETS:
        bad.append(FieldViolation("target", "rest, upload or replace"))
    if bad:
        raise InvalidArgument("invalid request: " + "; ".join(v.field for v in bad), bad)
    out = jobs_pb2.SubmitJobRequest(
        user_id=request.user_id,
        method=request.method,
        params=params,
        target=_TARGETS[target],
        callback_url=request.callback_url,
        callback_secret=request.callback_secret,
    )
    if request.HasField("meta"):
        out.meta.CopyFrom(request.meta)
    return out


def to_status(job: jobs_pb2.Job) -> legacy_pb2.LegacyJobStatus:
    """A Job in the original's status shape."""
    state = jobs.state_from_proto(job.state) or jobs.QUEUED
    error = {"message": job.error.message} if job.HasField("error") else None
    status = legacy_pb2.LegacyJobStatus(
        id=job.job_id,
        state=legacy.bull_state(state),
        queue=legacy.queue_name(jobs.target_from_proto(job.target)),
    )
    if state == jobs.COMPLETED:
        status.returnvalue.from_cache = job.from_cache
        if job.HasField("result"):
            status.returnvalue.flickr.CopyFrom(job.result)
    reason = legacy.failed_reason(state, error)
    if reason is not None:
        status.failedReason = reason
    return status


class LegacyServicer(legacy_pb2_grpc.LegacyServiceServicer):
    """The original API's two job RPCs on top of JobServicer."""

    def __init__(self, jobs_servicer: JobServicer) -> None:
        self._jobs = jobs_servicer

    async def SubmitLegacyJob(
        self, request: legacy_pb2.LegacySubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> legacy_pb2.LegacySubmitData:
        """Accept a job as SubmitJob does, marked as the original API's."""
        submitted = await self._jobs.submit(
            to_submit_request(request), context, extra={legacy.API_FIELD: legacy.API_LEGACY}
        )
        return legacy_pb2.LegacySubmitData(job_id=submitted.job_id)

    async def GetLegacyJobStatus(
        self, request: legacy_pb2.LegacyJobStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> legacy_pb2.LegacyJobStatus:
        """The job's state in the original's vocabulary; another user's job is not found."""
        bad = []
        if not request.job_id:
            bad.append(FieldViolation("job_id", "required"))
        if not validation.USER_ID_RE.fullmatch(request.user_id):
            bad.append(FieldViolation("user_id", "required; 1-128 of A-Z a-z 0-9 . _ : @ -"))
        if bad:
            raise InvalidArgument("job_id and user_id are required", bad)
        if not validation.JOB_ID_RE.fullmatch(request.job_id):
            raise NotFound(f"job {request.job_id[:64]} not found", reason="JOB_NOT_FOUND")
        job = await self._jobs.GetJob(jobs_pb2.GetJobRequest(job_id=request.job_id), context)
        if job.user_id != request.user_id:  # as the original: not found, not "forbidden"
            raise NotFound(f"job {request.job_id} not found", reason="JOB_NOT_FOUND")
        return to_status(job)
