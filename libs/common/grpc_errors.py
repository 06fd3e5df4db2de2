"""The one server interceptor: a server span per RPC, and FlickrHubError turned into rich status.

Any other exception becomes INTERNAL with an error id that also appears in the
log, so a caller never sees a stack trace or an internal detail. The span continues the
caller's trace (W3C `traceparent` metadata) and carries the RPC's semantic-convention
attributes; it replaces OpenTelemetry's grpc server instrumentation, which cost ~140 µs of
CPU per call here (its filters, metadata copies and per-call handler wrapping) against
~290 µs for the whole of a bare grpc.aio call.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pymongo.errors import ConnectionFailure as PyMongoConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import telemetry
from common.errors import FlickrHubError, Unavailable

log = logging.getLogger(__name__)

# Methods served untraced (prefixes of the full method path).
UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# Untraced methods still get their errors mapped, inside a span that records nothing.
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


# A store that cannot be reached is the caller's cue to retry, not an internal error.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    PyMongoConnectionFailure,
    RedisConnectionError,
    RedisTimeoutError,
)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, _UNREACHABLE):
        log.warning("dependency unavailable: %s", type(exc).__name__)
        exc = Unavailable("a FlickrHub store is unavailable; retry shortly", retry_after_s=2.0)
    if isinstance(exc, FlickrHubError):
        await context.abort_with_status(rpc_status.to_status(exc.to_status()))
    error_id = uuid.uuid4().hex[:12]
    log.exception("unhandled error %s", error_id, exc_info=exc, extra={"error_id": error_id})
    wrapped = FlickrHubError(f"internal error (error id {error_id})", metadata={"error_id": error_id})
    await context.abort_with_status(rpc_status.to_status(wrapped.to_status()))


def _server_span(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """The RPC's server span, a child of the caller's trace context (traceparent metadata) if it sent one."""
    carrier = {}
    for key, value in context.invocation_metadata() or ():
        if key in _TRACE_HEADERS:
            carrier[key] = value if isinstance(value, str) else value.decode()
    parent = telemetry.extract_fields(carrier) if carrier else None
    return telemetry.server_span(method, parent, lambda: _rpc_attributes(method))


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _end(span: Any, code: grpc.StatusCode) -> None:
    span.set_attribute(telemetry.ATTR_GRPC_STATUS, code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    if isinstance(exc, FlickrHubError):
        return exc.code
    if isinstance(exc, _UNREACHABLE):
        return grpc.StatusCode.UNAVAILABLE
    code = context.code() if isinstance(exc, grpc.aio.AbortError | grpc.RpcError) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.INTERNAL


def _span_for(method: str, traced: bool, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """The RPC's server span, or (untraced methods) a context giving a span that records nothing."""
    return _server_span(method, context) if traced else _NO_SPAN


def _wrap_unary(
    method: str, behavior: Callable[..., Awaitable[Any]], traced: bool = True
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with _span_for(method, traced, context) as span:
            try:
                response = await behavior(request, context)
            except (grpc.aio.AbortError, grpc.RpcError) as exc:
                _end(span, _code_of(exc, context))
                raise
            except Exception as exc:
                _end(span, _code_of(exc, context))
                await _abort(context, exc)
            _end(span, grpc.StatusCode.OK)
            return response

    return handler


def _wrap_stream(method: str, behavior: Callable[..., Any], traced: bool = True) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # Streams written with context.write() (e.g. the stock health Watch) are plain coroutines.
        return _wrap_unary(method, behavior, traced)

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with _span_for(method, traced, context) as span:
            try:
                async for item in behavior(request, context):
                    yield item
            except (grpc.aio.AbortError, grpc.RpcError) as exc:
                _end(span, _code_of(exc, context))
                raise
            except Exception as exc:
                _end(span, _code_of(exc, context))
                await _abort(context, exc)
            _end(span, grpc.StatusCode.OK)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Trace every RPC and map its errors to rich status; the wrapped handler is built once per method.

    gRPC asks every interceptor for a handler on every call. This one asks the interceptors after
    it (and the server) once per method and keeps the answer, so the wrapping costs nothing per
    call: the interceptors after it must answer the same handler for the same method, which all of
    FlickrHub's do (their per-call work happens inside the handlers they return). Health and
    reflection are not traced (probes would drown the traces), but their errors are mapped too.
    """

    def __init__(self, untraced: tuple[str, ...] = UNTRACED) -> None:
        self._untraced = untraced
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler: Any = await continuation(handler_call_details)
        if handler is None:  # an unknown method: UNIMPLEMENTED, nothing to keep
            return None
        wrapped = _wrap(method, handler, traced=not method.startswith(self._untraced))
        self._handlers[method] = wrapped
        return wrapped


def _wrap(method: str, handler: Any, traced: bool) -> Any:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, handler.unary_unary, traced),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(method, handler.unary_stream, traced),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(method, handler.stream_unary, traced),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
