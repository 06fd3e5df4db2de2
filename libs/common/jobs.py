"""The job's vocabulary: states, targets, priorities and the stream entry that carries a job.

Pure code: names as stored in MongoDB and Redis, conversions to and from the
protobuf enums, and the state machine's final states.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common import jsontext
from flickrhub.v1 import jobs_pb2

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
COMPLETED, FAILED, EXPIRED, CANCELLED = "completed", "failed", "expired", "cancelled"
FINAL_STATES = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})
LIVE_STATES = frozenset({QUEUED, RUNNING, RETRYING})

_STATE_TO_PROTO = {
    QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    RETRYING: jobs_pb2.JOB_STATE_RETRYING,
    COMPLETED: jobs_pb2.JOB_STATE_COMPLETED,
    FAILED: jobs_pb2.JOB_STATE_FAILED,
    EXPIRED: jobs_pb2.JOB_STATE_EXPIRED,
    CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
_PROTO_TO_STATE = {v: k for k, v in _STATE_TO_PROTO.items()}

_TARGET_TO_PROTO = {
    "rest": jobs_pb2.TARGET_REST,
    "upload": jobs_pb2.TARGET_UPLOAD,
    "replace": jobs_pb2.TARGET_REPLACE,
}
_PROTO_TO_TARGET = {v: k for k, v in _TARGET_TO_PROTO.items()}
_PROTO_TO_TARGET[jobs_pb2.TARGET_UNSPECIFIED] = "rest"

_PRIORITY_TO_PROTO = {
    "high": jobs_pb2.PRIORITY_HIGH,
    "normal": jobs_pb2.PRIORITY_NORMAL,
    "low": jobs_pb2.PRIORITY_LOW,
}
_PROTO_TO_PRIORITY = {v: k for k, v in _PRIORITY_TO_PROTO.items()}
_PROTO_TO_PRIORITY[jobs_pb2.PRIORITY_UNSPECIFIED] = "normal"


def state_to_proto(state: str) -> jobs_pb2.JobState.ValueType:
    """Stored state name → JobState."""
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> str | None:
    """JobState → stored name (None for UNSPECIFIED)."""
    return next((name for proto, name in _PROTO_TO_STATE.items() if proto == value), None)


def target_to_proto(target: str) -> jobs_pb2.Target.ValueType:
    """Stored target name → Target."""
    return _TARGET_TO_PROTO[target]


def target_from_proto(value: int) -> str:
    """Target → stored name; UNSPECIFIED means rest."""
    return _PROTO_TO_TARGET[value]  # type: ignore[index]


def priority_to_proto(priority: str) -> jobs_pb2.Priority.ValueType:
    """Stored priority name → Priority."""
    return _PRIORITY_TO_PROTO[priority]


def priority_from_proto(value: int) -> str:
    """Priority → stored name; UNSPECIFIED means normal."""
    return _PROTO_TO_PRIORITY[value]  # type: ignore[index]


@dataclass(frozen=True)
class JobEntry:
    """What a stream entry carries about a job: enough to execute it without reading MongoDB.

    The callback secret never rides in Redis; the worker reads it (encrypted) from MongoDB.
    """

    job_id: str
    token: str
    user_id: str
    method: str
    target: str
    params: dict[str, str]
    max_attempts: int
    attempt: int = 0
    priority: str = "normal"
    cache_bypass: bool = False
    has_callback: bool = False
    enqueued_ms: int = 0
    trace: dict[str, str] = field(default_factory=dict)
    # Upload and replace jobs: the GridFS id of the photo bytes (the bytes never ride in Redis).
    blob_id: str = ""
    # The job document's revision when this entry was produced (claim is then one compare-and-set).
    rev: int = 0
    # The API key id that submitted the job: the mover's fair scheduler shares moves out by client.
    client_id: str = ""
    # Work entries only: when the mover moved it (ms), naming its keys.IN_FLIGHT member; 0 when the
    # mover counted no in-flight cap. Not written by to_fields: each move sets its own.
    moved_ms: int = 0

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD (trace context under its W3C header names)."""
        fields = {
            "job_id": self.job_id,
            "token": self.token,
            "user_id": self.user_id,
            "method": self.method,
            "target": self.target,
            "params": jsontext.dumps(self.params),
            "max_attempts": str(self.max_attempts),
            "attempt": str(self.attempt),
            "priority": self.priority,
            "cache_bypass": "1" if self.cache_bypass else "0",
            "has_callback": "1" if self.has_callback else "0",
            "enqueued_ms": str(self.enqueued_ms),
            "rev": str(self.rev),
        }
        if self.blob_id:
            fields["blob_id"] = self.blob_id
        if self.client_id:
            fields["client_id"] = self.client_id
        fields.update(self.trace)
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> JobEntry:
        """Parse XREADGROUP fields; raises ValueError on a malformed entry."""
        if fields.get("priority", "normal") not in _PRIORITY_TO_PROTO:
            raise ValueError(f"malformed job entry: unknown priority {fields.get('priority')!r}")
        try:
            return cls(
                job_id=fields["job_id"],
                token=fields["token"],
                user_id=fields["user_id"],
                method=fields["method"],
                target=fields["target"],
                params=dict(json.loads(fields["params"])),
                max_attempts=int(fields["max_attempts"]),
                attempt=int(fields.get("attempt", 0)),
                priority=fields.get("priority", "normal"),
                cache_bypass=fields.get("cache_bypass") == "1",
                has_callback=fields.get("has_callback") == "1",
                enqueued_ms=int(fields.get("enqueued_ms", 0)),
                trace={k: fields[k] for k in ("traceparent", "tracestate") if k in fields},
                blob_id=fields.get("blob_id", ""),
                rev=int(fields.get("rev", 0)),
                client_id=fields.get("client_id", ""),
                moved_ms=int(fields.get("moved_ms", 0)),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed job entry: {exc!r}") from exc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], *, attempt: int, rev: int, trace: dict[str, str]) -> JobEntry:
        """The entry the gateway built for a job document (as `_record` stored it), at `attempt` and `rev`.

        Recovery rebuilds a lost entry from MongoDB with it; raises ValueError on a document
        that lacks what an entry needs.
        """
        created = doc.get("created_at")
        try:
            return cls(
                job_id=str(doc["job_id"]),
                token=str(doc["token_id_hash"]),
                user_id=str(doc["user_id"]),
                method=str(doc["method"]),
                target=str(doc.get("target") or "rest"),
                params={str(k): str(v) for k, v in dict(doc.get("params") or {}).items()},
                max_attempts=int(doc["max_attempts"]),
                attempt=attempt,
                priority=str(doc.get("priority") or "normal"),
                cache_bypass=bool(doc.get("cache_bypass")),
                has_callback=bool(doc.get("callback_url")),
                enqueued_ms=int(created.timestamp() * 1000) if isinstance(created, datetime) else 0,
                trace=dict(trace),
                blob_id=str(doc.get("blob_id") or ""),
                rev=rev,
                client_id=str(doc.get("client_id") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"job document cannot make an entry: {exc!r}") from exc

    def with_trace(self, trace: dict[str, str]) -> JobEntry:
        """The same entry carrying another span's context."""
        return JobEntry(**{**self.__dict__, "trace": dict(trace)})

    def next_attempt(self, rev: int) -> JobEntry:
        """The same entry, one attempt further, for the job at revision `rev`."""
        return JobEntry(**{**self.__dict__, "attempt": self.attempt + 1, "rev": rev})
