"""REST hardening: security headers on every answer, CORS for configured origins, no leaked internals.

- Security headers go on every response the app prepares (successes, errors,
  404s, streams) from one `on_response_prepare` hook. The Content-Security-Policy
  and Cache-Control depend on the path, decided in ONE table (`PATH_POLICIES`):
  JSON answers get `default-src 'none'` and `no-store`; the Swagger UI page under
  `/docs` may load its own same-origin scripts, styles and images.
- CORS: only origins listed in CORS_ALLOWED_ORIGINS get `Access-Control-Allow-Origin`
  (echoing the origin, never `*`, no credentials: clients authenticate with
  headers, not cookies); a preflight from another origin is refused with 403.
  `Vary: Origin` on every answer so caches never mix origins.
- Errors: an exception that escapes a handler becomes a JSON 500 with an
  `error_id` that is in the log line; aiohttp's own HTTP errors become JSON too.

Answers aiohttp's HTTP parser gives before any application code runs (a
malformed request line, a header over 8 KiB) are its plain-text 400s with
`Connection: close`: they never reach this module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web

from edge import envelope, status

log = logging.getLogger("edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Swagger UI: its own bundle, stylesheet, start-up script and images, all same-origin (no CDN, no
# inline script); React sets inline style attributes, hence 'unsafe-inline' for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class PathPolicy:
    """What a path's answers carry: its CSP and its default Cache-Control."""

    csp: str
    cache_control: str


API_POLICY = PathPolicy(API_CSP, "no-store")
# The one place per-path header policies live: (path prefix, policy), first match wins. A prefix
# matches the path itself and everything below it ("/docs" → "/docs", "/docs/static/x.js").
PATH_POLICIES: tuple[tuple[str, PathPolicy], ...] = (("/docs", PathPolicy(DOCS_CSP, "no-cache")),)

SECURITY_HEADERS: dict[str, str] = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = ", ".join(
    (
        "Authorization",
        "Content-Type",
        "X-Api-Key",
        "X-Idempotency-Key",
        "X-Request-Id",
        "traceparent",
        "tracestate",
        "grpc-timeout",
        "x-api-key-id",
        "x-timestamp",
        "x-nonce",
        "x-signature",
    )
)
CORS_EXPOSED = "X-Request-Id, Retry-After"
CORS_MAX_AGE_S = "600"


def policy_for(path: str) -> PathPolicy:
    """The header policy of a request path."""
    for prefix, policy in PATH_POLICIES:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return policy
    return API_POLICY


def _add_vary(response: web.StreamResponse, value: str) -> None:
    present = response.headers.get("Vary", "")
    if value.lower() not in (v.strip().lower() for v in present.split(",")):
        response.headers["Vary"] = f"{present}, {value}" if present else value


class Hardening:
    """The middleware and the response hook, configured with the allowed CORS origins."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self.allowed_origins = frozenset(allowed_origins)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Security and CORS headers on every answer, just before its headers go out."""
        policy = policy_for(request.path)
        headers = response.headers
        headers.update(SECURITY_HEADERS)
        headers["Content-Security-Policy"] = policy.csp
        headers.setdefault("Cache-Control", policy.cache_control)
        _add_vary(response, "Origin")
        origin = request.headers.get("Origin")
        if origin is not None and origin in self.allowed_origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSED

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer CORS preflights; turn escaped exceptions into JSON errors without internals."""
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            return self._preflight(origin, request)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            err = status.error(grpc.StatusCode.UNKNOWN, exc.reason)
            err.status = exc.status
            if "Allow" in exc.headers:
                err.headers["Allow"] = exc.headers["Allow"]
            return envelope.for_path(request.path).error(err, _request_id(request))
        except Exception:
            err = envelope.internal_error("internal error in the REST edge")
            log.exception(
                "edge failed on %s %s (error id %s)", request.method, request.path, err.body["error_id"]
            )
            return envelope.for_path(request.path).error(err, _request_id(request))

    def _preflight(self, origin: str, request: web.Request) -> web.StreamResponse:
        if origin not in self.allowed_origins:
            err = status.error(grpc.StatusCode.PERMISSION_DENIED, "origin not allowed")
            return envelope.for_path(request.path).error(err, _request_id(request))
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            },
        )


def _request_id(request: web.Request) -> str:
    return request.headers.get("X-Request-Id") or str(uuid.uuid4())


def install(app: web.Application, allowed_origins: Iterable[str]) -> None:
    """Wire the hardening middleware (outermost) and header hook into an app before it starts."""
    hardening = Hardening(allowed_origins)
    app.middlewares.insert(0, hardening.middleware)
    app.on_response_prepare.append(hardening.on_prepare)
