"""JobService: accept Flickr calls as jobs and report on them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from redis.exceptions import RedisError

from common import jobs, keys, redisio, telemetry, urlguard
from common.announce import announce
from common.blobs import BlobStore
from common.errors import (
    FailedPrecondition,
    FieldViolation,
    FlickrHubError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from common.jobstore import JobStore, now
from common.logs import job_id_var
from common.settings import Settings
from common.tokens import TokenStore
from common.vault import Vault
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from gateway import convert, identity, metrics, uploads, validation
from gateway.batcher import InsertBatcher
from gateway.events import EventHub

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 24 * 3600
WATCH_POLL_S = 5.0
CALLBACK_PURPOSE = "callback-secret"


def _metadata(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Validates, records in MongoDB, appends to the token's stream, answers at once."""

    def __init__(
        self,
        settings: Settings,
        redis: redisio.Redis,
        store: JobStore,
        tokens: TokenStore,
        vault: Vault,
        batcher: InsertBatcher,
        events: EventHub,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._tokens = tokens
        self._vault = vault
        self._batcher = batcher
        self._events = events
        self._blobs = BlobStore(store.jobs.database)
        self.url_guard = urlguard.UrlGuard.from_settings(settings)

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept one job."""
        return await self.submit(request, context)

    async def check_callback(self, url: str) -> None:
        """INVALID_ARGUMENT unless webhooks may be sent to `url` (resolved and checked now)."""
        await validation.check_callback_target(self.url_guard, url)

    async def submit(
        self,
        request: jobs_pb2.SubmitJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        extra: dict[str, Any] | None = None,
    ) -> jobs_pb2.SubmitJobResponse:
        """SubmitJob's work; `extra` fields go into the job document (e.g. the original API's marker)."""
        if request.target in (jobs_pb2.TARGET_UPLOAD, jobs_pb2.TARGET_REPLACE):  # before the other checks
            raise InvalidArgument(
                "use UploadJob (or POST /v1/uploads) for uploads",
                [FieldViolation("target", "upload and replace jobs carry a photo: use UploadJob")],
            )
        validation.validate_submit(request)
        identity.require_user(request.user_id)
        await self.check_callback(request.callback_url)
        target = jobs.target_from_proto(request.target)
        token = await self._tokens.get(request.user_id)
        if token is None:
            raise NotFound(f"no Flickr token for user_id {request.user_id!r}", reason="TOKEN_NOT_FOUND")
        idem_key = request.idempotency_key or _metadata(context, "x-idempotency-key")
        job_id = uuid.uuid4().hex
        if idem_key:
            existing = await self._reserve_idempotency(request, token.token_id_hash, idem_key, job_id)
            if existing is not None:
                metrics.SUBMITTED.labels(outcome="deduplicated").inc()
                doc = await self._store.get(existing)
                state = jobs.state_to_proto(doc["status"]) if doc else jobs_pb2.JOB_STATE_QUEUED
                return jobs_pb2.SubmitJobResponse(
                    job_id=existing, state=state, trace_id=doc.get("trace_id", "") if doc else ""
                )
        job_id_var.set(job_id)
        with telemetry.tracer().start_as_current_span(
            telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER
        ) as span:
            span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
            span.set_attribute(telemetry.ATTR_METHOD, request.method)
            span.set_attribute(telemetry.ATTR_TOKEN, token.token_id_hash)
            trace_id = telemetry.current_trace_id()
            entry = jobs.JobEntry(
                job_id=job_id,
                token=token.token_id_hash,
                user_id=request.user_id,
                method=request.method,
                target=target,
                params=dict(request.params),
                max_attempts=self._settings.worker_max_attempts,
                priority=jobs.priority_from_proto(request.priority),
                cache_bypass=request.cache_bypass,
                has_callback=bool(request.callback_url),
                enqueued_ms=int(time.time() * 1000),
                trace=dict(telemetry.inject_fields({})),
            )
            try:
                await self._record(request, entry, trace_id, context, extra)
                await self._enqueue(entry)
            except Exception:
                if idem_key:  # the key must not point at a job that was never accepted
                    await self._release_idempotency(token.token_id_hash, idem_key, job_id)
                raise
        metrics.SUBMITTED.labels(outcome="accepted").inc()
        log.info("job accepted", extra={"job_id": job_id, "method": request.method})
        return jobs_pb2.SubmitJobResponse(job_id=job_id, state=jobs_pb2.JOB_STATE_QUEUED, trace_id=trace_id)

    async def _reserve_idempotency(
        self, request: jobs_pb2.SubmitJobRequest, token: str, idem_key: str, job_id: str
    ) -> str | None:
        """Reserve the key for `job_id`; return the first job's id when the key was used before."""
        digest = hashlib.sha256(idem_key.encode()).hexdigest()[:32]
        unkeyed = jobs_pb2.SubmitJobRequest()
        unkeyed.CopyFrom(request)
        unkeyed.ClearField("idempotency_key")  # the key may come as a field or as metadata
        payload = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()[:32]
        key = keys.idempotency(token, digest)
        try:
            if await self._redis.set(key, f"{job_id}:{payload}", nx=True, ex=IDEMPOTENCY_TTL_S):
                return None
            held = str(await self._redis.get(key) or "")
        except RedisError as exc:
            raise Unavailable("queue store unavailable; retry shortly") from exc
        first_id, _, first_payload = held.partition(":")
        if first_payload != payload:
            raise FlickrHubError(
                "idempotency key already used with a different request",
                "IDEMPOTENCY_KEY_REUSED",
                grpc.StatusCode.ALREADY_EXISTS,
                violations=[FieldViolation("idempotency_key", "reused with a different payload")],
            )
        return first_id

    async def _record(
        self,
        request: jobs_pb2.SubmitJobRequest,
        entry: jobs.JobEntry,
        trace_id: str,
        context: grpc.aio.ServicerContext[Any, Any],
        extra: dict[str, Any] | None = None,
    ) -> None:
        created = now()
        doc: dict[str, Any] = {
            "job_id": entry.job_id,
            "client_id": identity.client_id(),  # the API key that submitted it
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
            doc["callback_secret"] = self._vault.encrypt(
                request.callback_secret, purpose=CALLBACK_PURPOSE, record_id=entry.job_id
            )
        try:
            await self._batcher.insert(doc)
        except Exception as exc:
            log.warning("job insert failed: %s", type(exc).__name__)
            raise Unavailable("job store unavailable; retry shortly") from exc

    async def _release_idempotency(self, token: str, idem_key: str, job_id: str) -> None:
        key = keys.idempotency(token, hashlib.sha256(idem_key.encode()).hexdigest()[:32])
        with contextlib.suppress(RedisError):
            held = str(await self._redis.get(key) or "")
            if held.startswith(f"{job_id}:"):
                await self._redis.delete(key)

    async def _enqueue(self, entry: jobs.JobEntry) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(keys.token_stream(entry.token), redisio.fields(entry.to_fields()))
        pipe.sadd(keys.ACTIVE_TOKENS, entry.token)
        try:
            await pipe.execute()
        except RedisError as exc:
            # Nothing was promised yet: undo the job document so the refusal changes nothing.
            await self._store.jobs.delete_one({"job_id": entry.job_id})
            raise Unavailable("queue unavailable; retry shortly") from exc

    async def UploadJob(
        self,
        request_iterator: AsyncIterator[jobs_pb2.UploadJobRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept an upload or replace job whose photo streams in as chunks (see gateway.uploads)."""
        return await uploads.accept(self, self._blobs, request_iterator, context)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        """One job's current state."""
        validation.validate_job_id(request.job_id)
        return convert.job_to_proto(await self._require(request.job_id))

    async def _require(self, job_id: str) -> dict[str, Any]:
        doc = await self._store.get(job_id)
        if doc is None:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
        identity.require_user(str(doc.get("user_id", "")))
        return doc

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.Job]:
        """Every state change until a final state."""
        validation.validate_job_id(request.job_id)
        async with self._events.watch(request.job_id) as hints:
            doc = await self._require(request.job_id)
            seen = (doc["status"], doc.get("attempts", 0))
            yield convert.job_to_proto(doc)
            while doc["status"] not in jobs.FINAL_STATES:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hints.get(), timeout=WATCH_POLL_S)
                doc = await self._require(request.job_id)
                current = (doc["status"], doc.get("attempts", 0))
                if current != seen:
                    seen = current
                    yield convert.job_to_proto(doc)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        """Cancel a job that has not started."""
        validation.validate_job_id(request.job_id)
        if not identity.acts_for_every_user():
            await self._require(request.job_id)  # the user check comes before the change
        if await self._store.cancel(request.job_id):
            doc = await self._require(request.job_id)
            if doc.get("blob_id"):  # a cancelled upload will never run: its photo goes now
                await self._blobs.delete(doc["blob_id"])
            await announce(
                self._redis, request.job_id, jobs.CANCELLED, has_callback=bool(doc.get("callback_url"))
            )
            return convert.job_to_proto(doc)
        doc = await self._require(request.job_id)
        raise FailedPrecondition(
            f"job is {doc['status']}; only queued or retrying jobs can be cancelled", "JOB_NOT_CANCELLABLE"
        )

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ListJobsResponse:
        """A user's jobs, newest first."""
        bad = []
        if not validation.USER_ID_RE.fullmatch(request.user_id):
            bad.append(FieldViolation("user_id", "required"))
        if not 0 <= request.page_size <= 100:
            bad.append(FieldViolation("page_size", "0..100"))
        if request.state not in jobs_pb2.JobState.values():
            bad.append(FieldViolation("state", "unknown state"))
        if bad:
            raise InvalidArgument("invalid ListJobsRequest", bad)
        identity.require_user(request.user_id)
        size = request.page_size or 20
        after = convert.decode_cursor(request.page_token) if request.page_token else None
        docs = await self._store.list_for_user(
            request.user_id,
            state=jobs.state_from_proto(request.state),
            method=request.method or None,
            limit=size + 1,
            after=after,
        )
        page = docs[:size]
        next_token = convert.encode_cursor(page[-1]) if len(docs) > size else ""
        return jobs_pb2.ListJobsResponse(
            jobs=[convert.job_to_proto(d) for d in page], next_page_token=next_token
        )
