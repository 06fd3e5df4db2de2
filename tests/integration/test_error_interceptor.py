"""The one server interceptor: a span per traced RPC, rich errors for every RPC, traced or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import telemetry
from common.errors import FieldViolation, InvalidArgument
from common.grpc_errors import ErrorInterceptor
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc

SUBMIT = "/flickrhub.v1.JobService/SubmitJob"


class Refusing(jobs_pb2_grpc.JobServiceServicer):
    """SubmitJob refuses with a field violation; GetJob fails with a bug."""

    async def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context: Any) -> jobs_pb2.SubmitJobResponse:
        raise InvalidArgument("bad user", [FieldViolation("user_id", "required")])

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Any) -> jobs_pb2.Job:
        raise RuntimeError("a bug with a secret inside")


async def _serve(untraced: tuple[str, ...]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor(untraced)])
    jobs_pb2_grpc.add_JobServiceServicer_to_server(Refusing(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing("test", extra=exporter)
    return exporter


@pytest.fixture(params=[(), (SUBMIT, "/flickrhub.v1.JobService/GetJob")], ids=["traced", "untraced"])
async def stub(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, bool]]:
    server, port = await _serve(request.param)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel), not request.param
    await server.stop(None)


async def test_errors_are_rich_status_whether_or_not_the_method_is_traced(
    stub: tuple[Any, bool], spans: InMemorySpanExporter
) -> None:
    client, traced = stub
    spans.clear()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.SubmitJob(jobs_pb2.SubmitJobRequest(), metadata=(("traceparent", _PARENT),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    assert status is not None and status.details  # BadRequest rides along
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.GetJob(jobs_pb2.GetJobRequest(job_id="0" * 32))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (failed.value.details() or "") and "error id" in (failed.value.details() or "")
    ours = [s for s in spans.get_finished_spans() if s.name.startswith("/flickrhub.v1.JobService/")]
    if not traced:
        assert ours == []
        return
    submit = next(s for s in ours if s.name == SUBMIT)
    assert format(submit.context.trace_id, "032x") == _PARENT.split("-")[1]  # the caller's trace goes on
    assert submit.attributes is not None and submit.attributes[telemetry.ATTR_GRPC_STATUS] == 3
    assert {s.name for s in ours} == {SUBMIT, "/flickrhub.v1.JobService/GetJob"}


_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
