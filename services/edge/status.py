"""gRPC status → HTTP status and the JSON error body, as grpc-gateway v2 maps them.

Error body: `{"code": <gRPC numeric code>, "message": "...", "details": [<Any as JSON>]}`,
the details taken from the `grpc-status-details-bin` trailer (a google.rpc.Status).
Unlike grpc-gateway, details such as BadRequest always render (it answers 500
unless the error is rebuilt), and a RetryInfo detail also sets `Retry-After`.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

from edge import transcode

# Imported for its side effect too: BadRequest, RetryInfo, QuotaFailure, ErrorInfo… must be
# in the default descriptor pool for json_format to render them inside an Any.
_RETRY_INFO_URL = "type.googleapis.com/" + error_details_pb2.RetryInfo.DESCRIPTOR.full_name
_DETAILS_KEY = "grpc-status-details-bin"

_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status grpc-gateway answers for a gRPC status code."""
    return _HTTP_BY_CODE.get(code, 500)


class HttpError:
    """An error ready to send: HTTP status, JSON body dict and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}

    def json(self) -> bytes:
        """The body as JSON bytes."""
        return transcode.dumps(self.body)


def error(code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any] = ()) -> HttpError:
    """An HttpError for a gRPC code, message and google.rpc details."""
    headers: dict[str, str] = {}
    rendered = []
    for detail in details:
        rendered.append(_render_any(detail))
        if detail.type_url == _RETRY_INFO_URL:
            retry = error_details_pb2.RetryInfo()
            with contextlib.suppress(DecodeError):  # a broken RetryInfo only loses the header
                detail.Unpack(retry)
                delay = retry.retry_delay
                headers["Retry-After"] = str(max(0, math.ceil(delay.seconds + delay.nanos / 1e9)))
    body = {"code": code.value[0], "message": message, "details": rendered}
    return HttpError(http_status(code), body, headers)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> HttpError:
    """The HttpError for a failed gRPC call, with the rich details from its trailers."""
    details: Sequence[any_pb2.Any] = ()
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                rich = status_pb2.Status.FromString(value)
            except DecodeError:  # a corrupt trailer must not hide the status itself
                break
            details = rich.details
            break
    return error(exc.code(), exc.details() or "", details)


def _render_any(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return transcode.detail_to_dict(detail)
    except (TypeError, KeyError, json_format.Error, DecodeError):
        # A detail type this edge does not know: still show it, as the proto3 JSON of an opaque Any.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}
