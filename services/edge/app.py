"""The REST edge: an aiohttp app that transcodes REST/JSON to gRPC calls on the gateway.

Routes come from the google.api.http options (`routes.build`); each request is
matched, transcoded, sent over one shared `grpc.aio.Channel` to the gateway (so
the gateway's interceptors run exactly as for gRPC clients) and the answer or the
rich status is rendered as JSON. Everything per route is worked out at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web
from google.protobuf import message
from grpc_health.v1 import health_pb2
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import start_http_server

from common.service import CHANNEL_OPTIONS, settle_gc
from common.settings import Settings, cors_origins
from edge import docs, envelope, errors, forwarding, hardening, metrics, routes, status, transcode, uploads
from flickrhub.v1 import admin_pb2, auth_pb2, jobs_pb2, keys_pb2, legacy_pb2

log = logging.getLogger("edge")

PROTO_MODULES: tuple[routes.ProtoModule, ...] = (jobs_pb2, admin_pb2, auth_pb2, legacy_pb2, keys_pb2)
READY_TIMEOUT_S = 2.0
# How often a server stream waiting for its next message checks that the client is still there.
DISCONNECT_POLL_S = 0.5

_JSON = "application/json"
_NDJSON = "application/x-ndjson"
# Content-Type values that are JSON in UTF-8 as sent by most clients: accepted without parsing.
_JSON_TYPES = frozenset(
    (_JSON, f"{_JSON}; charset=utf-8", f"{_JSON};charset=utf-8", f"{_JSON}; charset=UTF-8")
)
_UNMATCHED = "unmatched"

_tracer = trace.get_tracer("flickrhub.edge")
_CHANNEL = web.AppKey("edge_channel", grpc.aio.Channel)


@dataclass
class _Bound:
    """A route with its transcoder and its cached gRPC callable."""

    route: routes.Route
    builder: transcode.RequestBuilder[message.Message]
    call: Callable[..., Any] | None = None
    # The answer shape of this route's path (edge.envelope decides, in one place).
    envelope: envelope.Envelope = envelope.GOOGLE_RPC
    # The edge span's attributes known before the request arrives (the method is added per request).
    span_attributes: Mapping[str, str] | None = None


class Edge:
    """Request handling state: route table, channel and request metrics."""

    def __init__(self, route_table: Sequence[routes.Route], max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes  # EDGE_MAX_BODY_BYTES
        self.bound = [
            _Bound(
                r,
                transcode.RequestBuilder(r.request_cls, r.body, r.template.field_paths),
                envelope=envelope.for_path(r.template.source),
                span_attributes={
                    "http.request.method": r.verb,
                    "http.route": r.template.source,
                    "rpc.method": r.method_path,
                },
            )
            for r in route_table
        ]
        self.channel: grpc.aio.Channel | None = None
        self.draining = False
        self.metrics = metrics.RequestMetrics()
        # Paths that are a static template (`/v1/jobs`): every template's verdict on them, worked
        # out once; other paths are matched template by template.
        self._static: dict[str, list[tuple[_Bound, dict[str, str]]]] = {}
        for b in self.bound:
            if b.route.template.is_static:
                self._static[b.route.template.source] = self._candidates(b.route.template.source)

    def bind(self, channel: grpc.aio.Channel) -> None:
        """Create one callable per route on the shared channel."""
        self.channel = channel
        for b in self.bound:
            factory = channel.unary_stream if b.route.server_streaming else channel.unary_unary
            b.call = factory(
                b.route.method_path,
                request_serializer=b.route.request_cls.SerializeToString,
                response_deserializer=b.route.response_cls.FromString,
            )
        self._health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    def _candidates(self, raw_path: str) -> list[tuple[_Bound, dict[str, str]]]:
        found: list[tuple[_Bound, dict[str, str]]] = []
        for b in self.bound:
            variables = b.route.template.match(raw_path)
            if variables is not None:
                found.append((b, variables))
        if any(b.route.template.verb for b, _ in found):
            # `/v1/jobs/x:cancel` names the cancel resource, not a job called "x:cancel".
            found = [(b, v) for b, v in found if b.route.template.verb]
        return found

    def match(self, method: str, raw_path: str) -> tuple[_Bound, dict[str, str]]:
        """The route and path variables for a request, or a 404/405 rejection."""
        found = self._static.get(raw_path)
        if found is None:
            found = self._candidates(raw_path)
        for b, variables in found:
            if b.route.verb == method:
                return b, variables
        if not found:
            raise errors.http_error(404, grpc.StatusCode.NOT_FOUND, f"no route for {raw_path}")
        allow = ", ".join(sorted({b.route.verb for b, _ in found}))
        err = status.error(grpc.StatusCode.UNIMPLEMENTED, f"method {method} not allowed on {raw_path}")
        err.status = 405
        err.headers["Allow"] = allow
        raise errors.Reject(err)

    # -- handlers ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every REST route: match, transcode, call the gateway, render."""
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or forwarding.new_request_id()
        raw_path = request.raw_path.partition("?")[0]
        try:
            bound, variables = self.match(request.method, raw_path)
        except errors.Reject as rejected:
            unmatched = envelope.for_path(raw_path).error(rejected.error, request_id)
            self.metrics.observe(_UNMATCHED, unmatched.status, started)
            return unmatched
        route = bound.route
        # The edge span (a child of the client's traceparent, if any) is current while the request
        # is handled, so its logs carry it and its context is what the gateway receives. Started
        # and made current directly: the same span as start_as_current_span's, at less cost.
        span = _tracer.start_span(
            route.name,
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
            attributes=bound.span_attributes,
            record_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            response: web.StreamResponse
            try:
                msg, metadata, timeout = await self._prepare(request, bound, variables, request_id)
                if route.server_streaming:
                    response = await self._stream(request, bound, msg, metadata, timeout, request_id)
                else:
                    response = await self._unary(bound, msg, metadata, timeout, request_id)
            except errors.Reject as rejected:
                response = bound.envelope.error(rejected.error, request_id)
            except Exception:
                # A bug in the edge: log it with its trace and error id, answer JSON, never a stack trace.
                err = envelope.internal_error("internal error in the REST edge")
                log.exception("edge failed on %s (error id %s)", route.name, err.body["error_id"])
                response = bound.envelope.error(err, request_id)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        except Exception as exc:  # as use_span does: an escaping error marks the span
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()
        self.metrics.observe(route.name, response.status, started)
        return response

    async def _prepare(
        self, request: web.Request, bound: _Bound, variables: Mapping[str, str], request_id: str
    ) -> tuple[message.Message, list[tuple[str, str]], float | None]:
        body = await _read_body(request, bound.builder.accepts_body, self.max_body_bytes)
        try:
            # The query string is parsed only for routes that take fields from it (body is not "*").
            query = () if bound.builder.body == "*" else request.query.items()
            msg = bound.builder.build(variables, body, query)
        except transcode.TranscodeError as exc:
            raise errors.invalid(str(exc)) from None
        metadata, timeout = forwarding.metadata(request, request_id)
        # What a signed request covers (common.signing): the gateway trusts this only from the edge.
        metadata.append(("x-fh-body-sha256", hashlib.sha256(body or b"").hexdigest()))
        return msg, metadata, timeout

    async def _unary(
        self,
        bound: _Bound,
        msg: message.Message,
        metadata: list[tuple[str, str]],
        timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline, passed on to the call
        request_id: str,
    ) -> web.StreamResponse:
        assert bound.call is not None
        try:
            reply = await bound.call(msg, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return bound.envelope.error(errors.from_gateway(exc, self.channel), request_id)
        return bound.envelope.success(reply, bound.route, request_id)

    async def _stream(
        self,
        request: web.Request,
        bound: _Bound,
        msg: message.Message,
        metadata: list[tuple[str, str]],
        timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline, passed on to the call
        request_id: str,
    ) -> web.StreamResponse:
        """grpc-gateway's stream form: NDJSON lines `{"result": …}`, a final `{"error": …}` on failure."""
        assert bound.call is not None
        call = bound.call(msg, metadata=metadata, timeout=timeout)
        response: web.StreamResponse | None = None
        try:
            while True:
                item = await _next_or_disconnect(call, request)
                if item is None:  # the client went away: cancel the call (finally) and stop
                    return response or web.Response(status=499, headers={"X-Request-Id": request_id})
                if item is grpc.aio.EOF:
                    break
                if response is None:
                    response = await _start_stream(request, request_id)
                await response.write(transcode.dumps({"result": transcode.message_to_dict(item)}) + b"\n")
        except grpc.aio.AioRpcError as exc:
            err = errors.from_gateway(exc, self.channel)
            if response is None:  # nothing sent yet: a plain error answer with the right status
                return envelope.GOOGLE_RPC.error(err, request_id)
            await response.write(transcode.dumps({"error": err.body}) + b"\n")
        except ConnectionError:
            return response or web.Response(status=499, headers={"X-Request-Id": request_id})
        finally:
            call.cancel()  # no-op once the call has finished
        if response is None:
            response = await _start_stream(request, request_id)
        await response.write_eof()
        return response

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness: the edge process answers."""
        return _json_response(200, {"status": "ok"}, forwarding.request_id(request))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Readiness: the gateway's standard health service says SERVING."""
        serving = health_pb2.HealthCheckResponse.SERVING
        state = "draining"
        if not self.draining:
            try:
                reply = await self._health(health_pb2.HealthCheckRequest(), timeout=READY_TIMEOUT_S)
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                state = f"gateway health check failed: {exc.code().name}"
        ok = state == health_pb2.HealthCheckResponse.ServingStatus.Name(serving)
        return _json_response(200 if ok else 503, {"status": state}, forwarding.request_id(request))


async def _read_body(request: web.Request, accepts_body: bool, max_bytes: int) -> bytes | None:
    """The raw body within `max_bytes` (checked on Content-Length first, then while reading)."""
    if not request.body_exists:
        return None
    length = request.content_length
    if not accepts_body and length:
        raise errors.invalid(f"{request.method} {request.path} takes no request body")
    if (
        accepts_body
        and request.headers.get("Content-Type") not in _JSON_TYPES
        and (request.content_type != _JSON or (request.charset or "utf-8").lower() != "utf-8")
    ):
        sent = request.headers.get("Content-Type", "")
        raise errors.http_error(
            415, grpc.StatusCode.INVALID_ARGUMENT, f"unsupported content type {sent!r}: send application/json"
        )
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if body and not accepts_body:
        raise errors.invalid(f"{request.method} {request.path} takes no request body")
    return bytes(body)


def _too_large(max_bytes: int) -> errors.Reject:
    return errors.too_large("request body", max_bytes)


async def _next_or_disconnect(call: Any, request: web.Request) -> Any:
    """The next stream message (or EOF); None when the client disconnected first."""
    read = asyncio.ensure_future(call.read())
    try:
        while True:
            done, _ = await asyncio.wait((read,), timeout=DISCONNECT_POLL_S)
            if done:
                return read.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                return None
    finally:
        if not read.done():
            read.cancel()


async def _start_stream(request: web.Request, request_id: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": _NDJSON, "X-Request-Id": request_id})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


def _json_response(http: int, body: Mapping[str, Any], request_id: str) -> web.Response:
    return web.Response(
        status=http, body=transcode.dumps(body), content_type=_JSON, headers={"X-Request-Id": request_id}
    )


EDGE = web.AppKey("edge", Edge)


def create_app(settings: Settings, channel: grpc.aio.Channel | None = None) -> web.Application:
    """The edge app; it dials `settings.gateway_addr` unless given a channel (the caller then closes it)."""
    edge = Edge(routes.build(PROTO_MODULES), settings.edge_max_body_bytes)
    app = web.Application(client_max_size=settings.edge_max_body_bytes)
    app[EDGE] = edge
    hardening.install(app, cors_origins(settings.cors_allowed_origins))
    app.router.add_get("/healthz", edge.healthz)
    app.router.add_get("/readyz", edge.readyz)
    # Client-streaming routes as multipart forms, counted in the edge's metrics.
    upload_handlers = uploads.install(app, PROTO_MODULES, settings.edge_upload_max_bytes, edge.metrics)
    # /openapi.json and the Swagger UI at /docs, generated from the same PROTO_MODULES as the routes.
    docs.install(app, PROTO_MODULES)
    app.router.add_route("*", "/{tail:.*}", edge.handle)

    async def open_channel(app: web.Application) -> None:
        gateway = channel
        if gateway is None:
            gateway = grpc.aio.insecure_channel(settings.gateway_addr, options=CHANNEL_OPTIONS)
            app[_CHANNEL] = gateway  # ours to close
        edge.bind(gateway)
        for handler in upload_handlers:
            handler.bind(gateway)

    async def close_channel(app: web.Application) -> None:
        edge.draining = True
        owned = app.get(_CHANNEL)
        if owned is not None:
            await owned.close()

    app.on_startup.append(open_channel)
    app.on_cleanup.append(close_channel)
    return app


async def run(settings: Settings) -> None:
    """Serve the edge until SIGTERM/SIGINT, then drain in-flight requests and close the channel."""
    metrics_server = None
    if settings.edge_metrics_port >= 0:
        metrics_server, _ = start_http_server(settings.edge_metrics_port, addr=settings.edge_host)
    app = create_app(settings)
    # handler_cancellation: a client that hangs up cancels its gRPC call, as grpc-gateway does.
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=settings.shutdown_grace_s, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.edge_host, settings.edge_port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle_gc()
    log.info("edge listening", extra={"addr": f"{settings.edge_host}:{settings.edge_port}"})
    try:
        await stop.wait()
        log.info("edge draining")
        app[EDGE].draining = True
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
