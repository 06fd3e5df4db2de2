"""Errors the edge answers itself, and what a failed gateway call becomes.

A handler raises `Reject` anywhere while it reads a request; the route's answer
shape (edge.envelope) renders the error it carries.
"""

from __future__ import annotations

import logging

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]

from edge import status

log = logging.getLogger("edge")


class Reject(Exception):
    """Answer the request with this error instead of calling the gateway (or going on with the call)."""

    def __init__(self, error: status.HttpError) -> None:
        super().__init__(error.body.get("message", ""))
        self.error = error


def invalid(message_text: str) -> Reject:
    """400 INVALID_ARGUMENT."""
    return Reject(status.error(grpc.StatusCode.INVALID_ARGUMENT, message_text))


def http_error(http: int, code: grpc.StatusCode, message_text: str) -> Reject:
    """An error with an HTTP status of its own (413, 415, 404…) and a gRPC code for its body."""
    err = status.error(code, message_text)
    err.status = http
    return Reject(err)


def too_large(what: str, limit: int) -> Reject:
    """413: the request's body (or `what` of it) is over `limit` bytes."""
    return http_error(413, grpc.StatusCode.INVALID_ARGUMENT, f"{what} larger than {limit} bytes")


def from_gateway(exc: grpc.aio.AioRpcError, channel: grpc.aio.Channel | None) -> status.HttpError:
    """The error to answer for a failed gateway call on `channel`, with its rich details."""
    err = status.from_rpc_error(exc)
    if (
        exc.code() == grpc.StatusCode.UNAVAILABLE
        and not err.body["details"]
        and channel is not None
        and channel.get_state() != grpc.ChannelConnectivity.READY
    ):
        # The gateway could not be reached (not its own answer): don't leak addresses to clients.
        log.warning("gateway unreachable: %s", exc.details())
        err.body["message"] = "gateway unavailable, retry later"
    return err
