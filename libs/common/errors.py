"""One exception tree: every domain error carries its gRPC status, a reason and retryability.

One server interceptor turns these into rich `google.rpc.Status` answers; the
REST edge maps the status to HTTP. Nothing else decides how an error is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "flickrhub.io"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request."""

    field: str
    description: str


@dataclass
class FlickrHubError(Exception):
    """Base of every error FlickrHub reports to a caller."""

    message: str
    reason: str = "INTERNAL"
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False
    retry_after_s: float | None = None
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        """The rich status (with ErrorInfo, BadRequest and RetryInfo details) sent to the caller."""
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class InvalidArgument(FlickrHubError):
    """The request is malformed; nothing was changed."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(
            message, "INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT, violations=violations or []
        )


class NotFound(FlickrHubError):
    """The named user, token or job does not exist (or is not the caller's)."""

    def __init__(self, message: str, reason: str = "NOT_FOUND") -> None:
        super().__init__(message, reason, grpc.StatusCode.NOT_FOUND)


class FailedPrecondition(FlickrHubError):
    """The request is valid but the resource's state forbids it."""

    def __init__(self, message: str, reason: str = "FAILED_PRECONDITION") -> None:
        super().__init__(message, reason, grpc.StatusCode.FAILED_PRECONDITION)


class Unimplemented(FlickrHubError):
    """The capability exists in the contract but not in this release."""

    def __init__(self, message: str, reason: str = "UNIMPLEMENTED") -> None:
        super().__init__(message, reason, grpc.StatusCode.UNIMPLEMENTED)


class Unavailable(FlickrHubError):
    """A dependency (Redis, MongoDB) is down; the caller may retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "UNAVAILABLE") -> None:
        super().__init__(
            message, reason, grpc.StatusCode.UNAVAILABLE, retryable=True, retry_after_s=retry_after_s
        )
