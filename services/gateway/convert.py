"""Job documents → protobuf messages (what GetJob, WatchJob and ListJobs answer)."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from common import jobs
from common.errors import FieldViolation, InvalidArgument
from common.mongo import Doc
from flickrhub.v1 import jobs_pb2


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _struct(raw: str | None) -> struct_pb2.Struct | None:
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict):
        return None
    return json_format.ParseDict(value, struct_pb2.Struct())


def job_to_proto(doc: Doc) -> jobs_pb2.Job:
    """A job document as the Job message (the callback secret never leaves)."""
    job = jobs_pb2.Job(
        job_id=doc["job_id"],
        user_id=doc["user_id"],
        method=doc["method"],
        params=doc.get("params", {}),
        target=jobs.target_to_proto(doc.get("target", "rest")),
        state=jobs.state_to_proto(doc["status"]),
        from_cache=bool(doc.get("from_cache", False)),
        cache_bypassed=bool(doc.get("cache_bypass", False)),
        attempts=int(doc.get("attempts", 0)),
        max_attempts=int(doc.get("max_attempts", 0)),
        callback_url=doc.get("callback_url", ""),
        trace_id=doc.get("trace_id", ""),
        priority=jobs.priority_to_proto(doc.get("priority", "normal")),
        client_id=doc.get("client_id", ""),
    )
    for name in ("created_at", "updated_at", "started_at", "finished_at"):
        ts = _ts(doc.get(name))
        if ts is not None:
            getattr(job, name).CopyFrom(ts)
    result = _struct(doc.get("result_json"))
    if result is not None:
        job.result.CopyFrom(result)
    meta = _struct(doc.get("meta_json"))
    if meta is not None:
        job.meta.CopyFrom(meta)
    error = doc.get("error")
    if error and doc["status"] != jobs.COMPLETED:
        job.error.CopyFrom(
            jobs_pb2.JobError(
                code=error.get("code", ""),
                message=error.get("message", ""),
                flickr_code=int(error.get("flickr_code", 0)),
                retryable=bool(error.get("retryable", False)),
            )
        )
    return job


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """Opaque page token pointing just past the job at (created_at, job_id)."""
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, str]:
    """The (created_at, job_id) a page token points past; INVALID_ARGUMENT if it was not ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            "invalid page_token", [FieldViolation("page_token", "not a token we issued")]
        ) from exc
