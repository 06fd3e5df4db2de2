"""The original FlickrHub API's vocabulary (pure): Bull-like job states, queue names, webhook payload.

The original (Node, Bull/RabbitMQ) API named its queues `flickr_rest`,
`flickr_upload`, `flickr_replace` and reported Bull's job states. FlickrHub's
states map onto them as follows (docs/api/legacy.md repeats the table):

| FlickrHub state | original state | note |
| --- | --- | --- |
| queued    | waiting   | accepted, waiting in its token's queue |
| running   | active    | a worker is calling Flickr |
| retrying  | delayed   | a transient failure; waits for its backoff (Bull moves retried jobs to delayed) |
| completed | completed | `returnvalue` = `{from_cache, flickr}` |
| failed    | failed    | `failedReason` = the error message |
| expired   | failed    | `failedReason` = "expired: …" (Bull had no expiry state) |
| cancelled | failed    | `failedReason` = "cancelled: …" (Bull removed such jobs) |

Jobs submitted through the original routes carry `api: "legacy"` in their
document; their webhooks then use `webhook_payload` below.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from common import jobs

API_FIELD = "api"
API_LEGACY = "legacy"

BULL_STATES: dict[str, str] = {
    jobs.QUEUED: "waiting",
    jobs.RUNNING: "active",
    jobs.RETRYING: "delayed",
    jobs.COMPLETED: "completed",
    jobs.FAILED: "failed",
    jobs.EXPIRED: "failed",
    jobs.CANCELLED: "failed",
}
QUEUES: dict[str, str] = {"rest": "flickr_rest", "upload": "flickr_upload", "replace": "flickr_replace"}


def bull_state(status: str) -> str:
    """The original API's name for a FlickrHub job state."""
    return BULL_STATES.get(status, "unknown")


def queue_name(target: str) -> str:
    """The original API's queue name for a target (rest, upload, replace)."""
    return QUEUES.get(target, QUEUES["rest"])


def failed_reason(status: str, error: dict[str, Any] | None) -> str | None:
    """The original's `failedReason`: the error message of a job that ended without a result."""
    if status not in (jobs.FAILED, jobs.EXPIRED, jobs.CANCELLED):
        return None
    message = str((error or {}).get("message") or "")
    if status == jobs.FAILED:
        return message or "failed"
    return f"{status}: {message}" if message else status


def is_legacy(doc: dict[str, Any]) -> bool:
    """True when the job came in through the original API's routes."""
    return doc.get(API_FIELD) == API_LEGACY


def webhook_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """The original FlickrHub's webhook body for a finished job (the secret never appears)."""
    status = doc["status"]
    result = json.loads(doc["result_json"]) if doc.get("result_json") and status == jobs.COMPLETED else None
    meta = json.loads(doc["meta_json"]) if doc.get("meta_json") else None
    return {
        "job_id": doc["job_id"],
        "user_id": doc["user_id"],
        "queue": queue_name(doc.get("target", "rest")),
        "state": bull_state(status),
        "result": result,
        "error": failed_reason(status, doc.get("error")),
        "from_cache": bool(doc.get("from_cache", False)),
        "attempts_made": int(doc.get("attempts", 0)),
        "max_attempts": int(doc.get("max_attempts", 0)),
        "timestamp": datetime.now(UTC).isoformat(),
        "trace_id": doc.get("trace_id", ""),
        "meta": meta,
    }
