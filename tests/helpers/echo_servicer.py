"""A real JobService + AdminService for edge tests: jobs live in a dict, errors are rich.

Behaviour the edge tests rely on:
- SubmitJob stores the job; `method == ""` → INVALID_ARGUMENT with BadRequest;
  `user_id == "throttled"` → RESOURCE_EXHAUSTED with RetryInfo (1.5 s) and QuotaFailure;
  `user_id == "exotic"` → FAILED_PRECONDITION with a detail of a type the edge cannot know;
  `method == "flickr.test.slow"` sleeps 2 s first (deadline tests). The response's
  `trace_id` is the trace id of the traceparent the call carried.
- Every returned Job carries, in `meta["received_metadata"]`, the metadata of the call
  that returned it, so tests can assert which headers were forwarded.
- WatchJob streams QUEUED → RUNNING → COMPLETED; job id `fail-midway` streams one
  message then fails UNAVAILABLE; `forever` streams one message then waits until cancelled
  (setting `watch_cancelled`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from common.errors import FieldViolation, InvalidArgument
from flickrhub.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc


def _metadata_struct(context: grpc.aio.ServicerContext[Any, Any]) -> struct_pb2.Struct:
    received = struct_pb2.Struct()
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            received[key] = value
    return received


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class EchoJobs(jobs_pb2_grpc.JobServiceServicer):
    """JobService over an in-memory dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, jobs_pb2.Job] = {}
        self.watch_cancelled = asyncio.Event()
        self.last_metadata: dict[str, str] = {}

    def _remember(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.last_metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}

    def _answer(self, job: jobs_pb2.Job, context: grpc.aio.ServicerContext[Any, Any]) -> jobs_pb2.Job:
        reply = jobs_pb2.Job()
        reply.CopyFrom(job)
        reply.meta["received_metadata"] = _metadata_struct(context)
        return reply

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self._remember(context)
        if not request.method:
            err = InvalidArgument("method is required", [FieldViolation("method", "must not be empty")])
            await context.abort_with_status(rpc_status.to_status(err.to_status()))
        if request.user_id == "throttled":
            delay = duration_pb2.Duration(seconds=1, nanos=500_000_000)
            quota = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject="client:c1", description="1000 pending")
                ]
            )
            status = status_pb2.Status(
                code=code_pb2.RESOURCE_EXHAUSTED,
                message="too many pending jobs",
                details=[_pack(error_details_pb2.RetryInfo(retry_delay=delay)), _pack(quota)],
            )
            await context.abort_with_status(rpc_status.to_status(status))
        if request.user_id == "exotic":
            odd = any_pb2.Any(type_url="type.googleapis.com/example.Unknown", value=b"\x08\x01")
            status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="odd", details=[odd])
            await context.abort_with_status(rpc_status.to_status(status))
        if request.method == "flickr.test.slow":
            await asyncio.sleep(2)
        job_id = str(uuid.uuid4())
        job = jobs_pb2.Job(
            job_id=job_id,
            user_id=request.user_id,
            method=request.method,
            params=request.params,
            target=request.target or jobs_pb2.TARGET_REST,
            state=jobs_pb2.JOB_STATE_QUEUED,
            callback_url=request.callback_url,
            priority=request.priority,
            max_attempts=5,
        )
        job.meta.CopyFrom(request.meta)
        job.created_at.GetCurrentTime()
        self.jobs[job_id] = job
        traceparent = self.last_metadata.get("traceparent", "")
        trace_id = traceparent.split("-")[1] if traceparent.count("-") == 3 else ""
        return jobs_pb2.SubmitJobResponse(job_id=job_id, state=job.state, trace_id=trace_id)

    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        answers = [await self.SubmitJob(item, context) for item in request.jobs]
        return jobs_pb2.SubmitJobsResponse(jobs=answers)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self._remember(context)
        job = self.jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        return self._answer(job, context)

    async def UploadJob(self, request_iterator: Any, context: Any) -> jobs_pb2.SubmitJobResponse:
        """Count the chunks of an upload stream and accept it as a job."""
        chunks = 0
        header = jobs_pb2.SubmitJobRequest()
        async for part in request_iterator:
            if part.HasField("job"):
                header.CopyFrom(part.job)
            elif part.HasField("chunk"):
                chunks += 1
        job = jobs_pb2.Job(job_id=f"up{len(self.jobs)}", user_id=header.user_id, method=header.method)
        job.params["chunks"] = str(chunks)
        self.jobs[job.job_id] = job
        return jobs_pb2.SubmitJobResponse(job_id=job.job_id, state=jobs_pb2.JOB_STATE_QUEUED)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self._remember(context)
        job = self.jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        if job.state != jobs_pb2.JOB_STATE_QUEUED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "only queued jobs can be cancelled")
        job.state = jobs_pb2.JOB_STATE_CANCELLED
        return self._answer(job, context)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self._remember(context)
        if not request.user_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if request.user_id == "boom":
            raise RuntimeError("servicer bug")
        jobs = [
            j
            for j in reversed(self.jobs.values())
            if j.user_id == request.user_id
            and (not request.state or j.state == request.state)
            and (not request.method or j.method == request.method)
        ]
        return jobs_pb2.ListJobsResponse(jobs=jobs[: request.page_size or 20])

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.Job]:
        self._remember(context)
        if request.job_id in ("fail-midway", "forever"):
            yield jobs_pb2.Job(job_id=request.job_id, state=jobs_pb2.JOB_STATE_RUNNING)
            if request.job_id == "fail-midway":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "worker lost")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.watch_cancelled.set()
                raise
            return
        job = self.jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        for state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING, jobs_pb2.JOB_STATE_COMPLETED):
            update = jobs_pb2.Job()
            update.CopyFrom(job)
            update.state = state
            yield update


class EchoAdmin(admin_pb2_grpc.AdminServiceServicer):
    """AdminService answering fixed queue numbers (int64 fields render as JSON strings)."""

    async def GetQueueStats(
        self, request: admin_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        stats = admin_pb2.QueueStats(active_tokens=2, delayed=3)
        stats.work_streams.add(target="rest", length=10, pending=1, lag=9)
        for i in range(min(request.top_tokens or 10, 2)):
            stats.token_queues.add(token_id_hash=f"h{i}", depth=5 - i)
        return stats

    async def InvalidateCache(
        self, request: admin_pb2.InvalidateCacheRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        return admin_pb2.InvalidateCacheResponse(
            token_id=request.token_id, method=request.method, generation=1
        )


async def start_server() -> tuple[grpc.aio.Server, int, EchoJobs, health.aio.HealthServicer]:
    """A grpc.aio server on a free port with both servicers and the standard health service."""
    server = grpc.aio.server()
    jobs = EchoJobs()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(EchoAdmin(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, jobs, health_servicer
