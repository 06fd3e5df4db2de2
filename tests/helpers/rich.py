"""Reading google.rpc.Status details out of a failed gRPC call."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2


def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The rich status carried in the `grpc-status-details-bin` trailer."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status in the trailers")


def bad_fields(err: grpc.aio.AioRpcError) -> set[str]:
    """Field names of the BadRequest detail."""
    for detail in status_of(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field for v in bad.field_violations}
    return set()


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason."""
    for detail in status_of(err).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def result_of(job: object) -> dict[str, Any]:
    """A Job's `result` Struct as a plain dict."""
    value: dict[str, Any] = json_format.MessageToDict(job.result)  # type: ignore[attr-defined]
    return value
