"""JobService: accept Flickr calls as jobs and report on them.

Submissions (SubmitJob, SubmitJobs, UploadJob) are translated here and accepted by
gateway.acceptance; status reads, watches, cancels and lists are answered here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from common import jobs, redisio
from common.announce import announce
from common.blobs import BlobStore
from common.errors import FailedPrecondition, NotFound
from common.jobstore import JobStore
from common.settings import Settings
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from gateway import convert, history, identity, metrics, uploads, validation
from gateway.acceptance import Acceptance
from gateway.events import EventHub

IDEMPOTENCY_HEADER = "x-idempotency-key"


def _metadata(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""


def _idempotency_key(request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The job's idempotency key: its field, else the x-idempotency-key metadata (REST's header)."""
    return request.idempotency_key or _metadata(context, IDEMPOTENCY_HEADER)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Hands submissions to gateway.acceptance; answers status reads, watches, cancels and lists."""

    def __init__(
        self,
        settings: Settings,
        acceptance: Acceptance,
        store: JobStore,
        blobs: BlobStore,
        events: EventHub,
        redis: redisio.Redis,
    ) -> None:
        self._acceptance = acceptance
        self._store = store
        self._blobs = blobs
        self._events = events
        self._redis = redis
        self._watch_poll_s = settings.watch_poll_s
        self._list_max_examined = settings.list_jobs_max_examined
        self._max_photo_bytes = settings.upload_max_photo_bytes

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept one job."""
        return await self._acceptance.submit(request, _idempotency_key(request, context))

    async def submit(
        self,
        request: jobs_pb2.SubmitJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        extra: dict[str, Any] | None = None,
    ) -> jobs_pb2.SubmitJobResponse:
        """SubmitJob with `extra` fields in the job document (gateway.legacy_servicer's marker)."""
        return await self._acceptance.submit(request, _idempotency_key(request, context), extra)

    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobsResponse:
        """Accept up to 100 jobs, all or none (see gateway.batch)."""
        answers = await self._acceptance.submit_batch(
            list(request.jobs), _metadata(context, IDEMPOTENCY_HEADER)
        )
        return jobs_pb2.SubmitJobsResponse(jobs=answers)

    async def UploadJob(
        self,
        request_iterator: AsyncIterator[jobs_pb2.UploadJobRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_pb2.SubmitJobResponse:
        """Accept an upload or replace job whose photo streams in as chunks (see gateway.uploads)."""
        job, target = uploads.prepare(await uploads.first_job(request_iterator))
        photo = uploads.PhotoStream(request_iterator, context, self._max_photo_bytes)
        return await self._acceptance.upload(job, target, _idempotency_key(job, context), photo)

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
            await self._acceptance.release(str(doc.get("client_id", "")), [request.job_id])
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
        return await history.list_jobs(self._store, request, self._list_max_examined)
