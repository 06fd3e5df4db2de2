"""What a REST request forwards to the gateway: allow-listed headers as gRPC metadata, the deadline
from `grpc-timeout`, the request id, and the HTTP request a client may have signed.
"""

from __future__ import annotations

import os
import re

from aiohttp import web
from opentelemetry import propagate

from edge import errors

# The one allow-list of headers that become gRPC metadata (lower case). traceparent and
# tracestate are not copied: the edge span's context is injected in their place.
FORWARDED_HEADERS: tuple[str, ...] = (
    "authorization",
    "x-idempotency-key",
    "x-api-key",
    "x-signature",
    "x-timestamp",
    "x-nonce",
    "x-api-key-id",
)
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])\Z")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float:
    """Seconds in a `grpc-timeout` value such as `5S` or `100m`."""
    found = _TIMEOUT.match(value.strip())
    if found is None:
        raise ValueError(f"grpc-timeout: expected 1-8 digits and a unit H/M/S/m/u/n, got {value!r}")
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]


def metadata(request: web.Request, request_id: str) -> tuple[list[tuple[str, str]], float | None]:
    """gRPC metadata from the allow-listed headers, plus the deadline from grpc-timeout."""
    headers = request.headers
    carrier: dict[str, str] = {}
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if value is not None:
            carrier[name] = value
    forwarded = headers.get("x-forwarded-for")
    remote = request.remote or ""
    carrier["x-forwarded-for"] = f"{forwarded}, {remote}" if forwarded else remote
    carrier["x-request-id"] = request_id
    # The HTTP request a client may have signed (common.signing); set here, never copied from headers.
    carrier["x-fh-http-method"] = request.method
    carrier["x-fh-http-path"] = request.raw_path.partition("?")[0]
    carrier["x-fh-http-query"] = request.rel_url.raw_query_string
    for name, value in carrier.items():
        if not (value.isascii() and value.isprintable()):
            raise errors.invalid(f"header {name} must be printable ASCII")
    propagate.inject(carrier)  # traceparent/tracestate of the edge span, not the client's
    timeout = None
    raw_timeout = headers.get("grpc-timeout")
    if raw_timeout is not None:
        try:
            timeout = parse_grpc_timeout(raw_timeout)
        except ValueError as exc:
            raise errors.invalid(str(exc)) from None
    return list(carrier.items()), timeout


def request_id(request: web.Request) -> str:
    """The client's `X-Request-Id`, else a new one."""
    return request.headers.get("X-Request-Id") or new_request_id()


# The variant nibble of a random UUID: 10xx in binary.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) gives it, without the UUID object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
