"""JobService: accept Flickr calls as jobs and report on them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import admission, jobs, redisio, resp, telemetry, tokenqueue, urlguard
from common.announce import announce
from common.blobs import BlobStore
from common.errors import (
    FailedPrecondition,
    FieldViolation,
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
from gateway import batch, convert, history, idempotency, identity, metrics, uploads, validation
from gateway.batcher import JobCommitter
from gateway.events import EventHub
from gateway.turns import Turns

log = logging.getLogger(__name__)

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
        committer: JobCommitter,
        events: EventHub,
        wire: resp.Multiplexed | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._tokens = tokens
        self._vault = vault
        self._committer = committer
        self._events = events
        self._blobs = BlobStore(store.jobs.database)
        self.url_guard = urlguard.UrlGuard.from_settings(settings)
        self.admission = admission.Admission.from_settings(redis, settings, wire)
        committer.admission = self.admission  # single submissions' admissions ride its pipeline
        self.idempotency = idempotency.IdempotencyKeys(redis, settings.idempotency_ttl_s, wire)
        self._watch_poll_s = settings.watch_poll_s
        self.turns = Turns(settings.gateway_user_turns)

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept one job."""
        return await self.submit(request, context)

    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobsResponse:
        """Accept up to 100 jobs, all or none (see gateway.batch)."""
        return await batch.submit_jobs(self, request, context)

    async def check_callback(self, url: str) -> None:
        """INVALID_ARGUMENT unless webhooks may be sent to `url` (resolved and checked now)."""
        await validation.check_callback_target(self.url_guard, url)

    async def submit(
        self,
        request: jobs_pb2.SubmitJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        extra: dict[str, Any] | None = None,
    ) -> jobs_pb2.SubmitJobResponse:
        """SubmitJob's work; `extra` fields go into the job document (e.g. the original API's marker).

        Backpressure comes right after the checks that need no I/O: a refusal costs one Redis
        round trip and writes nothing. A duplicate (idempotency key) at the cap is refused too;
        after Retry-After it gets its first job back.
        """
        if request.target in (jobs_pb2.TARGET_UPLOAD, jobs_pb2.TARGET_REPLACE):  # before the other checks
            raise InvalidArgument(
                "use UploadJob (or POST /v1/uploads) for uploads",
                [FieldViolation("target", "upload and replace jobs carry a photo: use UploadJob")],
            )
        validation.validate_submit(request)
        identity.require_user(request.user_id)
        client = identity.client_id()
        async with self.turns.turn((client, request.user_id)):
            return await self._submit(request, context, client, extra)

    async def _submit(
        self,
        request: jobs_pb2.SubmitJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        client: str,
        extra: dict[str, Any] | None,
    ) -> jobs_pb2.SubmitJobResponse:
        job_id = uuid.uuid4().hex
        await self.admit(client, [job_id], deferrable=True)
        try:
            response = await self._accept(request, context, job_id, extra)
        except BaseException:
            await self.release(client, [job_id])
            raise
        if response.job_id != job_id:  # a duplicate: the first job already counts
            await self.release(client, [job_id])
        return response

    async def admit(self, client: str, job_ids: list[str], *, deferrable: bool = False) -> None:
        """Count `job_ids` as the client's open jobs, or refuse (counted by reason) when a cap is hit.

        `deferrable`: the jobs are committed through the group commit (common.admission.admit).
        """
        try:
            await self.admission.admit(client, job_ids, deferrable=deferrable)
        except admission.ClientOverloaded:
            metrics.BACKPRESSURE.labels(reason=admission.CLIENT).inc()
            raise
        except admission.BufferFull:
            metrics.BACKPRESSURE.labels(reason=admission.BUFFER).inc()
            raise
        except RedisError as exc:
            raise Unavailable("queue store unavailable; retry shortly") from exc

    async def release(self, client: str, job_ids: list[str]) -> None:
        """Stop counting ids that never became jobs (or whose job is final); a failure only logs."""
        try:
            await self.admission.release(client, job_ids)
        except RedisError as exc:  # the horizon trims what we could not release
            log.warning("could not release %d admission ids: %s", len(job_ids), type(exc).__name__)

    async def _accept(
        self,
        request: jobs_pb2.SubmitJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        job_id: str,
        extra: dict[str, Any] | None,
    ) -> jobs_pb2.SubmitJobResponse:
        """Record and enqueue an admitted job; a duplicate answers the first job (another job id)."""
        await self.check_callback(request.callback_url)
        target = jobs.target_from_proto(request.target)
        token = await self._tokens.get(request.user_id)
        if token is None:
            raise NotFound(f"no Flickr token for user_id {request.user_id!r}", reason="TOKEN_NOT_FOUND")
        idem_key = request.idempotency_key or _metadata(context, "x-idempotency-key")
        if idem_key:
            existing = await self._reserve_idempotency(request, token.token_id_hash, idem_key, job_id)
            if existing is not None:
                metrics.SUBMITTED.labels(outcome="deduplicated").inc()
                return (await self.responses([existing]))[0]
        job_id_var.set(job_id)
        with telemetry.span(telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
            span.set_attribute(telemetry.ATTR_METHOD, request.method)
            span.set_attribute(telemetry.ATTR_TOKEN, token.token_id_hash)
            trace_id = telemetry.current_trace_id()
            entry = self.new_entry(request, token.token_id_hash, job_id, target)
            try:
                await self.commit(self.document(request, entry, trace_id, extra), entry)
            except BaseException:
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
        claim = idempotency.Claim(token, idem_key, job_id, idempotency.fingerprint(request))
        return await self.idempotency.reserve(claim)

    async def responses(self, job_ids: list[str]) -> list[jobs_pb2.SubmitJobResponse]:
        """SubmitJobResponse of existing jobs (what a duplicate is answered), in the order given."""
        found = {
            doc["job_id"]: doc
            async for doc in self._store.jobs.find(
                {"job_id": {"$in": list(set(job_ids))}}, {"_id": 0, "job_id": 1, "status": 1, "trace_id": 1}
            )
        }
        out = []
        for job_id in job_ids:
            doc = found.get(job_id)
            state = jobs.state_to_proto(doc["status"]) if doc else jobs_pb2.JOB_STATE_QUEUED
            trace_id = doc.get("trace_id", "") if doc else ""
            out.append(jobs_pb2.SubmitJobResponse(job_id=job_id, state=state, trace_id=trace_id))
        return out

    def new_entry(
        self, request: jobs_pb2.SubmitJobRequest, token: str, job_id: str, target: str
    ) -> jobs.JobEntry:
        """The stream entry of a new job (call it inside the job's enqueue span: it carries its context)."""
        return jobs.JobEntry(
            job_id=job_id,
            token=token,
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
            client_id=identity.client_id(),
        )

    def document(
        self,
        request: jobs_pb2.SubmitJobRequest,
        entry: jobs.JobEntry,
        trace_id: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The job document of a new job, its callback secret encrypted."""
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
        return doc

    async def commit(self, doc: dict[str, Any], entry: jobs.JobEntry) -> None:
        """Record the job document and append its entry (group-committed, see gateway.batcher)."""
        await self._committer.commit(doc, entry)

    async def _release_idempotency(self, token: str, idem_key: str, job_id: str) -> None:
        await self.idempotency.release([idempotency.Claim(token, idem_key, job_id, "")])

    def queue_on(self, pipe: Pipeline, entry: jobs.JobEntry, doc: dict[str, Any] | None = None) -> None:
        """Put a new job's Redis writes on `pipe`: its hot copy (when kept) and its queue entry."""
        if doc is not None and self._store.hot is not None:
            # The hot copy rides the same round trip, ahead of the entry a worker will transition.
            self._store.hot.put_new_on(pipe, doc)
        tokenqueue.enqueue(pipe, entry)

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
        return convert.job_to_proto(await self._require(request.job_id, hot=True))

    async def _require(self, job_id: str, *, hot: bool = False) -> dict[str, Any]:
        """The job, if the caller may see it (hot: a status read, from the hot copy when Redis has one).

        A key not bound to the job's user is PERMISSION_DENIED; a non-admin key asking for another
        client's job gets NOT_FOUND, as if it did not exist (gateway.history.may_see).
        """
        if hot:
            doc, source = await self._store.status(job_id)
            metrics.STATUS_READS.labels(source=source).inc()
        else:
            doc = await self._store.get(job_id)
        if doc is None:
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
        identity.require_user(str(doc.get("user_id", "")))
        if not history.may_see(doc):  # another client's job: as if it did not exist
            raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
        return doc

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.Job]:
        """Every state change until a final state."""
        validation.validate_job_id(request.job_id)
        async with self._events.watch(request.job_id) as hints:
            doc = await self._require(request.job_id, hot=True)
            seen = (doc["status"], doc.get("attempts", 0))
            yield convert.job_to_proto(doc)
            while doc["status"] not in jobs.FINAL_STATES:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hints.get(), timeout=self._watch_poll_s)
                doc = await self._require(request.job_id, hot=True)
                current = (doc["status"], doc.get("attempts", 0))
                if current != seen:
                    seen = current
                    yield convert.job_to_proto(doc)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        """Cancel a job that has not started."""
        validation.validate_job_id(request.job_id)
        if not (identity.is_admin() and identity.acts_for_every_user()):
            await self._require(request.job_id)  # the user and client checks come before the change
        if await self._store.cancel(request.job_id):
            doc = await self._require(request.job_id)
            # Final now: it stops counting against its client's cap (a worker that meets its entry
            # releases it again, which repairs a gateway killed right here).
            await self.release(str(doc.get("client_id", "")), [request.job_id])
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
        """A user's jobs, newest first, as the caller may see them (see gateway.history)."""
        return await history.list_jobs(self._store, request)
