"""Client side of API keys: a gRPC channel that sends a key with every call.

Used by the CLI, the load driver, the dev stack and the tests. A call that already
carries credentials (authorization, x-api-key or a signature) is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from common.service import CHANNEL_OPTIONS

CREDENTIAL_KEYS = frozenset({"authorization", "x-api-key", "x-api-key-id"})


def bearer_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """The metadata (or HTTP headers) that present `api_key`."""
    return (("authorization", f"Bearer {api_key}"),)


def _with_key(details: Any, api_key: str) -> Any:
    metadata = list(details.metadata or ())
    if any(str(k).lower() in CREDENTIAL_KEYS for k, _ in metadata):
        return details
    metadata.extend(bearer_metadata(api_key))
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._key = api_key

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_key(client_call_details, self._key), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._key = api_key

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_key(client_call_details, self._key), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._key = api_key

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_key(client_call_details, self._key), request_iterator)


def key_interceptors(api_key: str) -> Sequence[grpc.aio.ClientInterceptor]:
    """Client interceptors that add `authorization: Bearer <api_key>` to every call lacking credentials."""
    return [_Unary(api_key), _UnaryStream(api_key), _StreamUnary(api_key)]


def authenticated_channel(
    target: str, api_key: str, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to the gateway that presents `api_key`."""
    return grpc.aio.insecure_channel(
        target, options=[*CHANNEL_OPTIONS, *options], interceptors=key_interceptors(api_key)
    )


class _SyncKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The same for blocking channels (the CLI)."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(str(k).lower() in CREDENTIAL_KEYS for k, _ in metadata):
            metadata.extend(bearer_metadata(self._key))
        return _SyncDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class _SyncDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def sync_authenticated_channel(target: str, api_key: str) -> grpc.Channel:
    """A blocking channel that presents `api_key` (empty: no credentials)."""
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _SyncKey(api_key)) if api_key else channel
