"""A new job's parts: its stream entry, its job document and the answer that names it.

No I/O: gateway.acceptance makes them inside the job's enqueue span (the entry carries the
span's context) and hands the document and the entry to the group commit.
"""

from __future__ import annotations

import time
from typing import Any

from common import jobs, telemetry
from common.jobstore import now
from common.vault import Vault
from flickrhub.v1 import jobs_pb2
from gateway import validation

CALLBACK_PURPOSE = "callback-secret"


def entry(
    request: jobs_pb2.SubmitJobRequest,
    *,
    job_id: str,
    client: str,
    token: str,
    target: str,
    max_attempts: int,
    blob_id: str = "",
) -> jobs.JobEntry:
    """The stream entry of a new job; an upload's (it has a blob) never reads the cache."""
    return jobs.JobEntry(
        job_id=job_id,
        token=token,
        user_id=request.user_id,
        method=request.method,
        target=target,
        params=dict(request.params),
        max_attempts=max_attempts,
        priority=jobs.priority_from_proto(request.priority),
        cache_bypass=request.cache_bypass or bool(blob_id),
        has_callback=bool(request.callback_url),
        enqueued_ms=int(time.time() * 1000),
        trace=dict(telemetry.inject_fields({})),
        blob_id=blob_id,
        client_id=client,
    )


def document(
    request: jobs_pb2.SubmitJobRequest,
    entry: jobs.JobEntry,
    trace_id: str,
    vault: Vault,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job document of a new job, its callback secret encrypted; `extra` fields added as given."""
    created = now()
    doc: dict[str, Any] = {
        "job_id": entry.job_id,
        "client_id": entry.client_id,  # the API key that submitted it
        "user_id": entry.user_id,
        "token_id_hash": entry.token,
        "method": entry.method,
        "params": entry.params,
        "target": entry.target,
        "priority": entry.priority,
        "cache_bypass": entry.cache_bypass,
        "status": jobs.QUEUED,
        "rev": 0,
        "attempts": 0,
        "max_attempts": entry.max_attempts,
        "callback_url": request.callback_url,
        "meta_json": validation.meta_json(request),
        "trace_id": trace_id,
        "created_at": created,
        "updated_at": created,
        **(extra or {}),
    }
    if request.callback_secret:
        doc["callback_secret"] = vault.encrypt(
            request.callback_secret, purpose=CALLBACK_PURPOSE, record_id=entry.job_id
        )
    return doc


def answer(job_id: str, trace_id: str) -> jobs_pb2.SubmitJobResponse:
    """What a submission is answered for a job it created: queued, with its trace id."""
    return jobs_pb2.SubmitJobResponse(job_id=job_id, state=jobs_pb2.JOB_STATE_QUEUED, trace_id=trace_id)
