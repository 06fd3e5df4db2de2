"""SubmitJobs: up to 100 jobs accepted or refused as a whole.

All-or-nothing, in the order SubmitJob checks one job: every item is validated
(a bad one is named by its index, `jobs[3].method`); the key must act for every
user; backpressure admits the whole batch or none of it; then callback targets,
tokens and idempotency keys. Only then is anything written: the job documents
with one insert_many, the stream entries with one pipeline. A failure while
writing removes the documents written and releases the keys and admission ids,
so a refused batch leaves nothing behind. Items that are duplicates (their
idempotency key was used before with the same request, or by an earlier item of
the batch) answer the first job's id and add no job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from common import jobs, telemetry
from common.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from flickrhub.v1 import jobs_pb2
from gateway import idempotency, identity, metrics, validation

if TYPE_CHECKING:
    from gateway.jobs_servicer import JobServicer

log = logging.getLogger(__name__)

MAX_JOBS = 100
_PHOTO_TARGETS = (jobs_pb2.TARGET_UPLOAD, jobs_pb2.TARGET_REPLACE)


def violations(items: Sequence[jobs_pb2.SubmitJobRequest]) -> list[FieldViolation]:
    """Every problem of a batch that needs no I/O, each field named with its item's index."""
    if not items:
        return [FieldViolation("jobs", f"1 to {MAX_JOBS} jobs")]
    if len(items) > MAX_JOBS:
        return [FieldViolation("jobs", f"at most {MAX_JOBS} jobs per batch, got {len(items)}")]
    bad: list[FieldViolation] = []
    for i, item in enumerate(items):
        if item.target in _PHOTO_TARGETS:
            bad.append(FieldViolation(f"jobs[{i}].target", "uploads carry a photo: use UploadJob"))
        for v in validation.submit_violations(item):
            bad.append(FieldViolation(f"jobs[{i}].{v.field}", v.description))
    return bad


async def submit_jobs(
    servicer: JobServicer, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> jobs_pb2.SubmitJobsResponse:
    """Validate, admit, record and enqueue every job of the batch, or none of them."""
    items = list(request.jobs)
    bad = violations(items)
    if bad:
        raise InvalidArgument("invalid SubmitJobsRequest: " + "; ".join(v.field for v in bad[:10]), bad)
    for user_id in sorted({item.user_id for item in items}):
        identity.require_user(user_id)
    job_ids = [uuid.uuid4().hex for _ in items]
    client = identity.client_id()
    await servicer.admit(client, job_ids)
    try:
        answers = await _accept(servicer, items, job_ids, context)
    except BaseException:
        await servicer.release(client, job_ids)
        raise
    created = {a.job_id for a in answers}
    unused = [job_id for job_id in job_ids if job_id not in created]  # duplicates add no job
    await servicer.release(client, unused)
    return jobs_pb2.SubmitJobsResponse(jobs=answers)


async def _accept(
    servicer: JobServicer,
    items: list[jobs_pb2.SubmitJobRequest],
    job_ids: list[str],
    context: grpc.aio.ServicerContext[Any, Any],
) -> list[jobs_pb2.SubmitJobResponse]:
    await _check_callbacks(servicer, items)
    tokens = await _tokens(servicer, items)
    header = _metadata(context, "x-idempotency-key")
    claims = []
    for i, item in enumerate(items):
        key = item.idempotency_key or (f"{header}/{i}" if header else "")
        if key:
            digest = idempotency.fingerprint(item)
            field = f"jobs[{i}].idempotency_key"
            claims.append((i, idempotency.Claim(tokens[i], key, job_ids[i], digest, field)))
    try:
        held = await servicer.idempotency.reserve_many([c for _, c in claims])
    except BaseException:
        await servicer.idempotency.release([c for _, c in claims])
        raise
    owner = list(job_ids)  # which job answers each item
    for (i, _), existing in zip(claims, held, strict=True):
        if existing is not None:
            owner[i] = existing
    fresh = [i for i, job_id in enumerate(owner) if job_id == job_ids[i]]
    try:
        traces = await _write(servicer, [(items[i], tokens[i], job_ids[i]) for i in fresh])
    except BaseException:
        await servicer.idempotency.release([c for _, c in claims])
        raise
    metrics.SUBMITTED.labels(outcome="accepted").inc(len(fresh))
    if len(fresh) < len(items):
        metrics.SUBMITTED.labels(outcome="deduplicated").inc(len(items) - len(fresh))
    log.info("batch accepted", extra={"jobs": len(items), "new_jobs": len(fresh)})
    new = {
        job_ids[i]: jobs_pb2.SubmitJobResponse(
            job_id=job_ids[i], state=jobs_pb2.JOB_STATE_QUEUED, trace_id=traces[n]
        )
        for n, i in enumerate(fresh)
    }
    earlier = [job_id for job_id in owner if job_id not in new]
    found = {r.job_id: r for r in await servicer.responses(earlier)} if earlier else {}
    return [new.get(job_id) or found[job_id] for job_id in owner]


async def _check_callbacks(servicer: JobServicer, items: list[jobs_pb2.SubmitJobRequest]) -> None:
    """Resolve and check every callback URL at once; INVALID_ARGUMENT naming each refused one."""
    results = await asyncio.gather(
        *(servicer.check_callback(item.callback_url) for item in items), return_exceptions=True
    )
    bad: list[FieldViolation] = []
    for i, result in enumerate(results):
        if isinstance(result, InvalidArgument):
            bad += [FieldViolation(f"jobs[{i}].{v.field}", v.description) for v in result.violations]
        elif isinstance(result, BaseException):
            raise result
    if bad:
        raise InvalidArgument("invalid SubmitJobsRequest: " + "; ".join(v.field for v in bad[:10]), bad)


async def _tokens(servicer: JobServicer, items: list[jobs_pb2.SubmitJobRequest]) -> list[str]:
    """Each item's token id; NOT_FOUND naming the items whose user has no Flickr token."""
    users = sorted({item.user_id for item in items})
    records = dict(zip(users, await asyncio.gather(*(servicer._tokens.get(u) for u in users)), strict=True))
    missing = [i for i, item in enumerate(items) if records[item.user_id] is None]
    if missing:
        named = ", ".join(f"jobs[{i}] ({items[i].user_id!r})" for i in missing[:10])
        raise NotFound(f"no Flickr token for the user of {named}", reason="TOKEN_NOT_FOUND")
    return [records[item.user_id].token_id_hash for item in items]  # type: ignore[union-attr]


async def _write(servicer: JobServicer, new: list[tuple[jobs_pb2.SubmitJobRequest, str, str]]) -> list[str]:
    """One insert_many, then one pipeline of appends; undone on failure. The jobs' trace ids."""
    if not new:
        return []
    entries: list[jobs.JobEntry] = []
    docs: list[dict[str, Any]] = []
    traces: list[str] = []
    for item, token, job_id in new:
        # One enqueue span per job, children of the batch call: each entry carries its own context
        # (while spans are exported; until then every entry carries the batch call's).
        with telemetry.span(telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
            span.set_attribute(telemetry.ATTR_METHOD, item.method)
            span.set_attribute(telemetry.ATTR_TOKEN, token)
            trace_id = telemetry.current_trace_id()
            entry = servicer.new_entry(item, token, job_id, jobs.target_from_proto(item.target))
            docs.append(servicer.document(item, entry, trace_id))
            entries.append(entry)
            traces.append(trace_id)
    ids = [entry.job_id for entry in entries]
    try:
        await servicer._store.jobs.insert_many(docs, ordered=False)
        pipe = servicer._redis.pipeline(transaction=False)
        for entry, doc in zip(entries, docs, strict=True):
            servicer.queue_on(pipe, entry, doc)
        await pipe.execute()
    except BaseException as exc:
        # Nothing was promised yet: remove what was written. An entry that did get appended finds
        # no job document and is dropped by the worker.
        with contextlib.suppress(PyMongoError):
            await servicer._store.jobs.delete_many({"job_id": {"$in": ids}})
        if isinstance(exc, (PyMongoError, RedisError)):
            log.warning("batch write failed: %s", type(exc).__name__)
            raise Unavailable("job store or queue unavailable; retry shortly") from exc
        raise
    return traces


def _metadata(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""
