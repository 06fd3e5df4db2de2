"""Validation of SubmitJob requests: pure, exhaustive, and reporting every bad field at once."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from google.protobuf import json_format, struct_pb2

from common import urlguard
from common.errors import FieldViolation, InvalidArgument
from flickrhub.v1 import jobs_pb2

METHOD_RE = re.compile(r"^flickr(\.[A-Za-z][A-Za-z0-9]*){2,5}$")
USER_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")

MAX_PARAMS = 64
MAX_PARAM_VALUE = 4096
MAX_META_BYTES = 16 * 1024
MAX_META_DEPTH = 32  # levels of objects/arrays; deeper nesting is refused, not stored
MAX_URL = 2048
SECRET_LEN = (16, 256)
MAX_IDEMPOTENCY_KEY = 128
# FlickrHub sets these itself; a client may not.
RESERVED_PARAMS = frozenset(
    {"method", "format", "nojsoncallback", "jsoncallback", "api_key", "api_sig", "photo"}
)


def submit_violations(req: jobs_pb2.SubmitJobRequest) -> list[FieldViolation]:
    """Every problem with a SubmitJobRequest (empty when it is valid)."""
    bad: list[FieldViolation] = []
    if not USER_ID_RE.fullmatch(req.user_id):
        bad.append(FieldViolation("user_id", "required; 1-128 of A-Z a-z 0-9 . _ : @ -"))
    if len(req.method) > 128 or not METHOD_RE.fullmatch(req.method):
        bad.append(
            FieldViolation("method", "must look like flickr.<namespace>.<name>, e.g. flickr.photos.search")
        )
    bad += _param_violations(req.params)
    if req.target not in jobs_pb2.Target.values():
        bad.append(FieldViolation("target", "unknown target"))
    if req.priority not in jobs_pb2.Priority.values():
        bad.append(FieldViolation("priority", "unknown priority"))
    bad += _callback_violations(req.callback_url, req.callback_secret)
    if req.HasField("meta"):
        bad += meta_violations(req.meta)
    key = req.idempotency_key
    if len(key) > MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        bad.append(
            FieldViolation("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        )
    return bad


def meta_violations(meta: struct_pb2.Struct) -> list[FieldViolation]:
    """`meta`: at most MAX_META_BYTES as JSON, MAX_META_DEPTH levels, no control characters."""
    value = json_format.MessageToDict(meta)
    if _depth(value) > MAX_META_DEPTH:
        return [FieldViolation("meta", f"at most {MAX_META_DEPTH} levels of nesting")]
    bad: list[FieldViolation] = []
    if len(json.dumps(value, separators=(",", ":"))) > MAX_META_BYTES:
        bad.append(FieldViolation("meta", f"at most {MAX_META_BYTES} bytes as JSON"))
    if _has_control(value):
        bad.append(FieldViolation("meta", "keys and strings may not hold NUL or other control characters"))
    return bad


def _depth(value: object) -> int:
    """Nesting levels of a JSON value (iterative: a hostile depth costs no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _has_control(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and has_control_chars(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def has_control_chars(text: str) -> bool:
    """True when `text` holds NUL or another C0/C1 control character (tab, LF and CR are allowed)."""
    return any((ord(c) < 32 and c not in "\t\n\r") or 127 <= ord(c) < 160 for c in text)


def _param_violations(params: Mapping[str, str]) -> list[FieldViolation]:
    items = list(params.items())
    bad: list[FieldViolation] = []
    if len(items) > MAX_PARAMS:
        bad.append(FieldViolation("params", f"at most {MAX_PARAMS} entries"))
    for key, value in items:
        if not PARAM_KEY_RE.fullmatch(key):
            bad.append(FieldViolation(f"params[{key[:64]}]", "keys are 1-64 of A-Z a-z 0-9 _"))
        elif key in RESERVED_PARAMS or key.startswith("oauth_"):
            bad.append(FieldViolation(f"params[{key}]", "reserved: FlickrHub sets this parameter itself"))
        if len(value) > MAX_PARAM_VALUE:
            bad.append(
                FieldViolation(f"params[{key[:64]}]", f"values are at most {MAX_PARAM_VALUE} characters")
            )
        elif has_control_chars(value):
            bad.append(FieldViolation(f"params[{key[:64]}]", "values may not hold NUL or control characters"))
    return bad


def _callback_violations(url: str, secret: str) -> list[FieldViolation]:
    if not url:
        return [FieldViolation("callback_secret", "only allowed with callback_url")] if secret else []
    bad: list[FieldViolation] = []
    parts = urlsplit(url)
    if len(url) > MAX_URL or parts.scheme not in {"http", "https"} or not parts.hostname:
        bad.append(FieldViolation("callback_url", f"an absolute http(s) URL of at most {MAX_URL} characters"))
    if not SECRET_LEN[0] <= len(secret) <= SECRET_LEN[1] or not secret.isprintable():
        bad.append(
            FieldViolation(
                "callback_secret",
                f"required with callback_url; {SECRET_LEN[0]}-{SECRET_LEN[1]} printable characters",
            )
        )
    return bad


def _meta_json(req: jobs_pb2.SubmitJobRequest) -> str:
    return json.dumps(json_format.MessageToDict(req.meta), separators=(",", ":"))


def meta_json(req: jobs_pb2.SubmitJobRequest) -> str:
    """The request's meta as compact JSON ("" when absent)."""
    return _meta_json(req) if req.HasField("meta") else ""


def validate_submit(req: jobs_pb2.SubmitJobRequest) -> None:
    """Raise InvalidArgument listing every bad field."""
    bad = submit_violations(req)
    if bad:
        raise InvalidArgument("invalid SubmitJobRequest: " + "; ".join(v.field for v in bad), bad)


def validate_job_id(job_id: str) -> None:
    """Raise InvalidArgument unless `job_id` has the form FlickrHub assigns."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument("invalid job_id", [FieldViolation("job_id", "32 lowercase hex characters")])


async def check_callback_target(guard: urlguard.UrlGuard, url: str) -> None:
    """INVALID_ARGUMENT (callback_url) unless the webhook URL resolves to addresses webhooks may reach."""
    if not url:
        return
    try:
        await guard.check_url(url)
    except urlguard.UrlRefused as exc:
        raise InvalidArgument(
            f"callback_url refused: {exc}", [FieldViolation("callback_url", str(exc))]
        ) from None
