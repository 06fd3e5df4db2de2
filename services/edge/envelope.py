"""Answer shapes of the REST edge, and the one rule that picks a shape for a path.

- `GOOGLE_RPC` (every route of the v1 API): the message as JSON; errors as
  grpc-gateway's `{"code", "message", "details"}`.
- `LEGACY` (every route under `/api/`: the original FlickrHub API, incl. the
  `/api/v1/auth/*` additional bindings, which the original also wrapped):
  `{"request_id", "data", "error"}`; errors `{"code": "ERR_…", "message"}` plus
  `details` (field violations) when the request was invalid; the success status
  comes from the method's `(flickrhub.v1.http_success_status)` option (202 for
  `POST /api/v1/flickr/rest`).

Every 5xx answer, in both shapes, carries an `error_id` that also appears in a
log line: the gateway's own (from its ErrorInfo metadata) when it made one, else a
fresh one logged here. No stack trace or internal detail ever reaches the body.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web
from google.protobuf import descriptor, message

from edge import routes, status, transcode

log = logging.getLogger("edge")

JSON = "application/json"
LEGACY_PREFIX = "/api/"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

# The original API's codes: by ErrorInfo reason first, then by HTTP status (docs/api/legacy.md).
LEGACY_CODES_BY_REASON: dict[str, str] = {
    "TOKEN_NOT_FOUND": "ERR_TOKEN_NOT_FOUND",
    "JOB_NOT_FOUND": "ERR_JOB_NOT_FOUND",
    "AUTH_REQUEST_UNKNOWN": "ERR_INVALID_STATE",
}
LEGACY_CODES_BY_STATUS: dict[int, str] = {
    400: "ERR_INVALID_REQUEST",
    401: "ERR_UNAUTHORIZED",
    403: "ERR_FORBIDDEN",
    404: "ERR_NOT_FOUND",
    405: "ERR_METHOD_NOT_ALLOWED",
    409: "ERR_CONFLICT",
    413: "ERR_PAYLOAD_TOO_LARGE",
    415: "ERR_UNSUPPORTED_MEDIA_TYPE",
    429: "ERR_RATE_LIMITED",
    499: "ERR_CANCELLED",
    501: "ERR_NOT_IMPLEMENTED",
    503: "ERR_UNAVAILABLE",
    504: "ERR_TIMEOUT",
}


def _detail(err: status.HttpError, type_url: str) -> dict[str, Any] | None:
    for detail in err.body.get("details") or ():
        if isinstance(detail, dict) and detail.get("@type") == type_url:
            return detail
    return None


def stamp_error_id(err: status.HttpError) -> None:
    """Give a 5xx answer its `error_id` (the gateway's when it sent one), logging a fresh one."""
    if err.status < 500 or "error_id" in err.body:
        return
    info = _detail(err, _ERROR_INFO) or {}
    error_id = str((info.get("metadata") or {}).get("error_id") or "")
    if not error_id:
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "edge answered %d, error id %s: %s",
            err.status,
            error_id,
            err.body.get("message", ""),
            extra={"error_id": error_id},
        )
    err.body["error_id"] = error_id


def internal_error(message_text: str) -> status.HttpError:
    """A 500 for a failure inside the edge; log the exception with the returned body's `error_id`."""
    err = status.error(grpc.StatusCode.INTERNAL, message_text)
    error_id = uuid.uuid4().hex[:12]
    err.body["error_id"] = error_id
    err.body["message"] = f"{message_text} (error id {error_id})"
    return err


class Envelope:
    """grpc-gateway's shapes (the v1 API)."""

    name = "google.rpc"

    def success(self, reply: message.Message, route: routes.Route, request_id: str) -> web.Response:
        """The answer to a successful unary call."""
        return web.Response(
            status=route.success_status,
            body=transcode.response_json(reply, route.response_body),
            content_type=JSON,
            headers={"X-Request-Id": request_id},
        )

    def error(self, err: status.HttpError, request_id: str) -> web.Response:
        """The answer to a refused or failed call."""
        stamp_error_id(err)
        return web.Response(
            status=err.status,
            body=self.error_body(err, request_id),
            content_type=JSON,
            headers={**err.headers, "X-Request-Id": request_id},
        )

    def error_body(self, err: status.HttpError, request_id: str) -> bytes:
        """The JSON body of an error answer."""
        return err.json()


class LegacyEnvelope(Envelope):
    """The original FlickrHub API's `{"request_id", "data", "error"}`."""

    name = "legacy"

    def success(self, reply: message.Message, route: routes.Route, request_id: str) -> web.Response:
        """`data` is the reply with every declared field present (unset → null), as the original sent."""
        data = transcode.message_to_dict(reply)
        fields: Any = reply.DESCRIPTOR.fields
        for field in fields:
            if isinstance(field, descriptor.FieldDescriptor):
                data.setdefault(field.name, None)
        body = {"request_id": request_id, "data": data, "error": None}
        return web.Response(
            status=route.success_status,
            body=transcode.dumps(body),
            content_type=JSON,
            headers={"X-Request-Id": request_id},
        )

    def error_body(self, err: status.HttpError, request_id: str) -> bytes:
        """`{"request_id", "data": null, "error": {"code": "ERR_…", "message", …}}`."""
        info = _detail(err, _ERROR_INFO) or {}
        code = LEGACY_CODES_BY_REASON.get(str(info.get("reason", "")))
        if code is None:
            code = LEGACY_CODES_BY_STATUS.get(
                err.status, "ERR_INTERNAL" if err.status >= 500 else "ERR_REQUEST"
            )
        error: dict[str, Any] = {"code": code, "message": err.body.get("message", "")}
        bad = _detail(err, _BAD_REQUEST)
        if bad and bad.get("field_violations"):
            error["details"] = bad["field_violations"]
        if "error_id" in err.body:
            error["error_id"] = err.body["error_id"]
        return transcode.dumps({"request_id": request_id, "data": None, "error": error})


GOOGLE_RPC = Envelope()
LEGACY = LegacyEnvelope()


def for_path(path: str) -> Envelope:
    """The envelope of a request path or path template: the original API's under /api/, else v1's."""
    return LEGACY if path.startswith(LEGACY_PREFIX) else GOOGLE_RPC
