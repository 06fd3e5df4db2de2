"""Accepting jobs: the one way a submission becomes a recorded, queued job.

Every route that makes jobs comes here; the servicers only translate requests and replies.
`submit` takes one job (SubmitJob, the legacy submit), `submit_batch` up to 100 all or none
(SubmitJobs), `upload` one whose photo streams in (UploadJob). In order:

1. the checks that need no I/O (gateway.validation; gateway.batch names a batch's items), and
   the calling key must act for every user of the submission;
2. backpressure (common.admission): the submission's job ids count against the caps, or it is
   refused (RESOURCE_EXHAUSTED / UNAVAILABLE with RetryInfo) before anything is written;
3. callback targets (resolved and checked) and the users' Flickr tokens;
4. an upload's photo: the go-ahead, then the bytes into the blob store;
5. idempotency keys (gateway.idempotency): a duplicate answers the first job and adds none;
6. per job its stream entry and its document, inside the job's enqueue span;
7. the group commit (gateway.batcher): documents journaled in MongoDB, then hot copies and queue
   entries in one Redis pipeline, before any job id is answered.

A failure or cancel on the way undoes what was written, so a refused submission leaves nothing
behind: the committer removes the jobs it could not enqueue and those of callers cancelled
meanwhile, a batch takes back its other jobs when one fails (`JobCommitter.withdraw`); keys are
released, an upload's photo deleted, admission ids released. Cleanups run to their end even when
the call is cancelled again (`undo`).

What differs by route, and why:

- a single submission takes one of its user's turns (gateway.turns) for all of it, and when
  every cap is far its admission sends nothing: the id rides its commit's pipeline
  (`Admission.defer`);
- a batch is deferred the same way (its jobs ride the same pipelines) but takes no turn: turns
  meter one user's calls, and a batch is one call of up to 100 jobs for up to 100 users; the
  commit's bulk lane already keeps a big batch out of other tokens' way;
- an upload is neither: it lasts as long as its photo streams (up to UPLOAD_MAX_PHOTO_BYTES), so
  a turn would stall its user's other submissions that long, and a deferred id would stay
  invisible to the other replicas' counts that long. Its admission is counted before a byte of
  the photo is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from opentelemetry import trace
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from common import admission, jobs, redisio, resp, telemetry, urlguard
from common.blobs import BlobInfo, BlobStore, BlobWriter
from common.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from common.jobstore import JobStore
from common.logs import job_id_var
from common.settings import Settings
from common.tokens import TokenStore
from common.vault import Vault
from flickrhub.v1 import jobs_pb2
from gateway import batch, idempotency, identity, metrics, newjob, validation
from gateway.batcher import JobCommitter
from gateway.turns import Turns

log = logging.getLogger(__name__)

_PHOTO_TARGETS = (jobs_pb2.TARGET_UPLOAD, jobs_pb2.TARGET_REPLACE)
# Bound once: looking a labelled child up costs ~3 µs per submission.
_ACCEPTED = metrics.SUBMITTED.labels(outcome="accepted")
_DEDUPLICATED = metrics.SUBMITTED.labels(outcome="deduplicated")


class Photo(Protocol):
    """The photo of an upload as it arrives (gateway.uploads reads it off the UploadJob stream)."""

    async def go_ahead(self) -> None:
        """Tell the client the job is accepted so far and its bytes may come."""

    async def receive(self, writer: BlobWriter) -> BlobInfo:
        """Write every byte to `writer` and publish the blob; raise when the photo is refused."""


class Acceptance:
    """Admits, records and enqueues jobs, and undoes all of it when a submission fails."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: JobStore,
        tokens: TokenStore,
        vault: Vault,
        blobs: BlobStore,
        admission: admission.Admission,
        keys: idempotency.IdempotencyKeys,
        committer: JobCommitter,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._vault = vault
        self._blobs = blobs
        self._admission = admission
        self._keys = keys
        self._committer = committer
        self._turns = Turns(settings.gateway_user_turns)
        self._url_guard = urlguard.UrlGuard.from_settings(settings)
        self._max_attempts = settings.worker_max_attempts

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis: redisio.Redis,
        wire: resp.Multiplexed,
        store: JobStore,
        tokens: TokenStore,
        vault: Vault,
        blobs: BlobStore,
    ) -> Acceptance:
        """Admission, idempotency keys and the group commit as `settings` name them, steps over `wire`."""
        counts = admission.Admission.from_settings(redis, settings, wire)
        return cls(
            settings,
            store=store,
            tokens=tokens,
            vault=vault,
            blobs=blobs,
            admission=counts,
            keys=idempotency.IdempotencyKeys(redis, settings.idempotency_ttl_s, wire),
            # Deferred admissions ride the commit's pipeline, ahead of their entries.
            committer=JobCommitter(store.jobs, redis, store.hot, settings.insert_batch_ms, wire, counts),
        )

    async def submit(
        self, request: jobs_pb2.SubmitJobRequest, idem_key: str, extra: dict[str, Any] | None = None
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept one job; `extra` fields go into its document (e.g. the original API's marker).

        Backpressure comes right after the checks that need no I/O: a refusal costs at most one
        Redis round trip and writes nothing. A duplicate (idempotency key) at the cap is refused
        too; after Retry-After it gets its first job back.
        """
        if request.target in _PHOTO_TARGETS:  # before the other checks
            raise InvalidArgument(
                "use UploadJob (or POST /v1/uploads) for uploads",
                [FieldViolation("target", "upload and replace jobs carry a photo: use UploadJob")],
            )
        validation.validate_submit(request)
        identity.require_user(request.user_id)
        client = identity.client_id()
        turn = (client, request.user_id)
        await self._turns.acquire(turn)
        try:
            job_ids = [uuid.uuid4().hex]
            if not self._admission.defer(client, job_ids):
                await self._admit(client, job_ids)
            try:
                response = await self._accept(request, client, job_ids[0], idem_key, extra)
            except BaseException:
                await undo(self.release(client, job_ids))
                raise
            if response.job_id != job_ids[0]:  # a duplicate: the first job already counts
                await self.release(client, job_ids)
            return response
        finally:
            self._turns.release(turn)

    async def _accept(
        self,
        request: jobs_pb2.SubmitJobRequest,
        client: str,
        job_id: str,
        idem_key: str,
        extra: dict[str, Any] | None,
    ) -> jobs_pb2.SubmitJobResponse:
        """Record and enqueue an admitted job; a duplicate answers the first job (another job id)."""
        if request.callback_url:
            await validation.check_callback_target(self._url_guard, request.callback_url)
        record = await self._tokens.get(request.user_id)
        if record is None:
            raise NotFound(f"no Flickr token for user_id {request.user_id!r}", reason="TOKEN_NOT_FOUND")
        token = record.token_id_hash
        claim = None
        if idem_key:
            claim = idempotency.Claim(token, idem_key, job_id, idempotency.fingerprint(request))
            existing = await self._keys.reserve(claim)
            if existing is not None:
                _DEDUPLICATED.inc()
                return (await self.responses([existing]))[0]
        job_id_var.set(job_id)
        target = jobs.target_from_proto(request.target)
        trace_id = await self._record(request, client, token, job_id, target, claim, extra)
        _ACCEPTED.inc()
        log.info("job accepted", extra={"job_id": job_id, "method": request.method})
        return newjob.answer(job_id, trace_id)

    async def _record(
        self,
        request: jobs_pb2.SubmitJobRequest,
        client: str,
        token: str,
        job_id: str,
        target: str,
        claim: idempotency.Claim | None,
        extra: dict[str, Any] | None = None,
        blob_id: str = "",
    ) -> str:
        """Commit one job (its document, then its entry), undone on failure; its trace id."""
        with telemetry.span(telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
            span.set_attribute(telemetry.ATTR_METHOD, request.method)
            if blob_id:
                span.set_attribute(telemetry.ATTR_TARGET, target)
            span.set_attribute(telemetry.ATTR_TOKEN, token)
            trace_id = telemetry.current_trace_id()
            entry = newjob.entry(
                request,
                job_id=job_id,
                client=client,
                token=token,
                target=target,
                max_attempts=self._max_attempts,
                blob_id=blob_id,
            )
            doc = newjob.document(request, entry, trace_id, self._vault, extra)
            try:
                await self._committer.commit(doc, entry)
            except BaseException:  # the committer left nothing behind (gateway.batcher)
                if claim is not None:  # the key must not point at a job that was never accepted
                    await undo(self._keys.release([claim]))
                raise
        return trace_id

    async def submit_batch(
        self, items: Sequence[jobs_pb2.SubmitJobRequest], header_key: str
    ) -> list[jobs_pb2.SubmitJobResponse]:
        """Accept every job of a batch or none of them (see gateway.batch); answers in the items' order.

        `header_key`: the batch's X-Idempotency-Key, which gives item i the key `<header>/<i>`.
        """
        bad = batch.violations(items)
        if bad:
            raise batch.refusal(bad)
        for user_id in sorted({item.user_id for item in items}):
            identity.require_user(user_id)
        job_ids = [uuid.uuid4().hex for _ in items]
        client = identity.client_id()
        if not self._admission.defer(client, job_ids):
            await self._admit(client, job_ids)
        try:
            answers = await self._accept_batch(items, client, job_ids, header_key)
        except BaseException:
            await undo(self.release(client, job_ids))
            raise
        created = {answer.job_id for answer in answers}
        await self.release(client, [job_id for job_id in job_ids if job_id not in created])  # duplicates
        return answers

    async def _accept_batch(
        self, items: Sequence[jobs_pb2.SubmitJobRequest], client: str, job_ids: list[str], header_key: str
    ) -> list[jobs_pb2.SubmitJobResponse]:
        await batch.check_callbacks(self._url_guard, items)
        tokens = await batch.token_ids(self._tokens, items)
        numbered = batch.claims(items, tokens, job_ids, header_key)
        claims = [claim for _, claim in numbered]
        try:
            held = await self._keys.reserve_many(claims)
        except BaseException:
            await self._keys.release(claims)
            raise
        owner = list(job_ids)  # which job answers each item
        for (i, _), existing in zip(numbered, held, strict=True):
            if existing is not None:
                owner[i] = existing
        fresh = [i for i, job_id in enumerate(owner) if job_id == job_ids[i]]
        new = [(items[i], tokens[i], job_ids[i]) for i in fresh]
        traces = await self._record_batch(new, client, claims)
        _ACCEPTED.inc(len(fresh))
        if len(fresh) < len(items):
            _DEDUPLICATED.inc(len(items) - len(fresh))
        log.info("batch accepted", extra={"jobs": len(items), "new_jobs": len(fresh)})
        answers = {
            job_id: newjob.answer(job_id, trace_id)
            for (_, _, job_id), trace_id in zip(new, traces, strict=True)
        }
        earlier = [job_id for job_id in owner if job_id not in answers]
        found = {r.job_id: r for r in await self.responses(earlier)} if earlier else {}
        return [answers.get(job_id) or found[job_id] for job_id in owner]

    async def _record_batch(
        self,
        new: list[tuple[jobs_pb2.SubmitJobRequest, str, str]],
        client: str,
        claims: list[idempotency.Claim],
    ) -> list[str]:
        """Commit a batch's new jobs, all or none (a failure takes the rest back); their trace ids."""
        if not new:
            return []
        accepted: list[tuple[dict[str, Any], jobs.JobEntry]] = []
        traces: list[str] = []
        for item, token, job_id in new:
            # One enqueue span per job, children of the batch call: each entry carries its own context
            # (while spans are exported; until then every entry carries the batch call's).
            with telemetry.span(telemetry.SPAN_ENQUEUE, kind=trace.SpanKind.PRODUCER) as span:
                span.set_attribute(telemetry.ATTR_JOB_ID, job_id)
                span.set_attribute(telemetry.ATTR_METHOD, item.method)
                span.set_attribute(telemetry.ATTR_TOKEN, token)
                trace_id = telemetry.current_trace_id()
                target = jobs.target_from_proto(item.target)
                entry = newjob.entry(
                    item,
                    job_id=job_id,
                    client=client,
                    token=token,
                    target=target,
                    max_attempts=self._max_attempts,
                )
                accepted.append((newjob.document(item, entry, trace_id, self._vault), entry))
                traces.append(trace_id)
        job_ids = [job_id for _, _, job_id in new]
        try:
            results = await self._committer.commit_many(accepted)
        except BaseException:  # cancelled: the committer leaves nothing behind (gateway.batcher)
            await undo(self._keys.release(claims))
            raise
        errors = [result for result in results if result is not None]
        if errors:
            # All or none: the jobs that did go in are taken back too (the committer removed the rest).
            committed = [job_id for job_id, result in zip(job_ids, results, strict=True) if result is None]
            await undo(self._take_back(committed, claims))
            if any(not isinstance(error, Unavailable) for error in errors):
                raise next(error for error in errors if not isinstance(error, Unavailable))
            log.warning("batch write failed: %d of %d jobs", len(errors), len(job_ids))
            raise Unavailable("job store or queue unavailable; retry shortly") from errors[0]
        return traces

    async def upload(
        self, job: jobs_pb2.SubmitJobRequest, target: str, idem_key: str, photo: Photo
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept an upload or replace job (validated by gateway.uploads) whose photo streams in."""
        identity.require_user(job.user_id)
        client = identity.client_id()
        job_ids = [uuid.uuid4().hex]
        await self._admit(client, job_ids)  # before a byte of the photo is stored
        try:
            response = await self._accept_upload(job, target, client, job_ids[0], idem_key, photo)
        except BaseException:
            await undo(self.release(client, job_ids))
            raise
        if response.job_id != job_ids[0]:  # a duplicate: the first job already counts
            await self.release(client, job_ids)
        return response

    async def _accept_upload(
        self,
        job: jobs_pb2.SubmitJobRequest,
        target: str,
        client: str,
        job_id: str,
        idem_key: str,
        photo: Photo,
    ) -> jobs_pb2.SubmitJobResponse:
        if job.callback_url:
            await validation.check_callback_target(self._url_guard, job.callback_url)
        record = await self._tokens.get(job.user_id)
        if record is None:
            raise NotFound(f"no Flickr token for user_id {job.user_id!r}", reason="TOKEN_NOT_FOUND")
        job_id_var.set(job_id)
        # "Accepted, send the photo": the REST edge waits for this before streaming a byte, so a refusal
        # above reaches it intact (a client still writing when the call ends sees only grpc's INTERNAL).
        await photo.go_ahead()
        info = await self._store_photo(photo, job.user_id, target, job_id)
        token = record.token_id_hash
        try:
            return await self._record_upload(job, target, client, token, job_id, idem_key, info)
        except BaseException:
            with contextlib.suppress(PyMongoError):
                await undo(self._blobs.delete(info.blob_id))
            raise

    async def _store_photo(self, photo: Photo, user_id: str, target: str, job_id: str) -> BlobInfo:
        """The photo in the blob store; a refused, failed or cancelled stream leaves no chunk behind."""
        writer = self._blobs.writer(job_id, {"job_id": job_id, "user_id": user_id, "target": target})
        try:
            return await photo.receive(writer)
        except BaseException as exc:
            with contextlib.suppress(PyMongoError):
                await undo(writer.abort())
            if isinstance(exc, PyMongoError):
                raise Unavailable("blob store unavailable; retry shortly") from exc
            raise

    async def _record_upload(
        self,
        job: jobs_pb2.SubmitJobRequest,
        target: str,
        client: str,
        token: str,
        job_id: str,
        idem_key: str,
        info: BlobInfo,
    ) -> jobs_pb2.SubmitJobResponse:
        claim = None
        if idem_key:
            # The photo's digest is part of the payload: the same key with other bytes is a different request.
            keyed = jobs_pb2.SubmitJobRequest()
            keyed.CopyFrom(job)
            keyed.params["photo"] = info.sha256  # `photo` is reserved, so it cannot clash with a client param
            claim = idempotency.Claim(token, idem_key, job_id, idempotency.fingerprint(keyed))
            existing = await self._keys.reserve(claim)
            if existing is not None:
                _DEDUPLICATED.inc()
                await self._blobs.delete(info.blob_id)
                return (await self.responses([existing]))[0]
        extra = {"blob_id": info.blob_id, "blob_size": info.size, "blob_sha256": info.sha256}
        trace_id = await self._record(job, client, token, job_id, target, claim, extra, info.blob_id)
        _ACCEPTED.inc()
        log.info("upload accepted", extra={"job_id": job_id, "method": job.method, "size": info.size})
        return newjob.answer(job_id, trace_id)

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

    async def _admit(self, client: str, job_ids: list[str]) -> None:
        """Count `job_ids` as the client's open jobs now, or refuse (counted by reason) when a cap is hit."""
        try:
            await self._admission.admit(client, job_ids)
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
            await self._admission.release(client, job_ids)
        except RedisError as exc:  # the horizon trims what we could not release
            log.warning("could not release %d admission ids: %s", len(job_ids), type(exc).__name__)

    async def _take_back(self, committed: list[str], claims: list[idempotency.Claim]) -> None:
        """Undo a batch that failed after some of its jobs were committed: those jobs, then the keys."""
        if committed:
            with contextlib.suppress(PyMongoError):  # MongoDB unreachable: those jobs stay and run
                await self._committer.withdraw(committed)
        await self._keys.release(claims)

    async def drain(self) -> None:
        """Write what is pending and wait for the commits in flight (graceful shutdown)."""
        await self._committer.drain()


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
