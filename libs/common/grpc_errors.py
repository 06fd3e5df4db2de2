"""The one server interceptor that turns FlickrHubError into a rich gRPC status.

Any other exception becomes INTERNAL with an error id that also appears in the
log, so a caller never sees a stack trace or an internal detail.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from pymongo.errors import ConnectionFailure as PyMongoConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import FlickrHubError, Unavailable

log = logging.getLogger(__name__)


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


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


def _wrap_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # Streams written with context.write() (e.g. the stock health Watch) are plain coroutines.
        return _wrap_unary(behavior)

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Map domain errors to rich status; hide everything else behind an error id."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
