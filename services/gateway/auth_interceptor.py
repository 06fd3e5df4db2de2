"""The one server interceptor that authenticates, authorizes, rate-limits and audits every call.

It runs inside ErrorInterceptor (so its refusals become rich status) for every
FlickrHub RPC; health and reflection pass untouched. REST calls arrive through the
edge over gRPC and meet exactly the same checks. Per call:

1. client address (peer, or x-forwarded-for when the peer is a trusted proxy);
2. the rule of the RPC (gateway.policy): OPEN, CLIENT or ADMIN;
3. the key (gateway.authn): UNAUTHENTICATED / PERMISSION_DENIED;
4. the key's rate limit for the call's class (gateway.ratelimit): RESOURCE_EXHAUSTED
   with RetryInfo and QuotaFailure (REST: 429 + Retry-After). The same Redis step
   says whether the key was rotated or revoked since its check was cached; if so the
   key is authenticated again from MongoDB before anything else happens;
4b. the role: a non-admin key calling an admin RPC gets PERMISSION_DENIED;
5. the caller goes into gateway.identity.current for the servicer's user checks;
6. an audit entry (gateway.audit), queued without waiting, whatever the outcome.

Unary requests are deserialized by a wrapper that keeps their raw bytes: a gRPC
signature covers exactly the bytes the client sent, not a re-serialization.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from common import signing
from common.apikeys import parse_key
from common.errors import FlickrHubError, InvalidArgument, Unavailable
from gateway import identity, policy
from gateway.audit import AuditWriter
from gateway.authn import Authenticator, Request
from gateway.identity import Caller, PermissionDenied
from gateway.ratelimit import Decision, RateLimiter

Context = grpc.aio.ServicerContext[Any, Any]
DRAIN_MAX_BYTES = 4 * 1024 * 1024
DRAIN_MAX_S = 2.0
DRAIN_IDLE_S = 0.2  # a client that sends nothing for this long is waiting for our answer


class RateLimited(FlickrHubError):
    """A key's rate limit refused the call: RetryInfo says when to come back, QuotaFailure which limit."""

    def __init__(self, key_id: str, bucket: str, retry_after_s: float) -> None:
        super().__init__(
            f"rate limit of API key {key_id} exceeded ({bucket}); retry in {retry_after_s:.1f} s",
            "RATE_LIMITED",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            retryable=True,
            retry_after_s=retry_after_s,
            metadata={"key_id": key_id, "bucket": bucket},
        )
        self.key_id = key_id
        self.bucket = bucket

    def to_status(self) -> status_pb2.Status:
        """The base status plus a QuotaFailure naming the key and the bucket."""
        status = super().to_status()
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"api_key:{self.key_id}", description=f"requests per minute ({self.bucket})"
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(quota)
        status.details.append(packed)
        return status


_UNDECODABLE = object()


def _decodable(request: Any) -> None:
    if request is _UNDECODABLE:
        raise InvalidArgument("the request message could not be decoded (malformed or nested too deeply)")


def _metadata(context: Context) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not key.endswith("-bin") and key not in found:
            found[key] = value if isinstance(value, str) else value.decode("latin-1")
    return found


def _claimed_key_id(md: dict[str, str]) -> str:
    """The key id a (possibly failed) call claimed, for the audit log."""
    bearer = md.get("authorization", "").partition(" ")[2] or md.get("x-api-key", "")
    parsed = parse_key(bearer) if bearer else None
    if parsed:
        return parsed[0]
    return md.get(signing.HEADER_KEY_ID, "")[:32]


def _outcome(exc: BaseException | None, context: Context) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, FlickrHubError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AbortError | grpc.RpcError):
        code = context.code() if hasattr(context, "code") else None
        return code.name if isinstance(code, grpc.StatusCode) else "ABORTED"
    if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
        return "CANCELLED"
    return "INTERNAL"


async def _drain(request_iterator: Any) -> None:
    """Read (and drop) a little of a refused client stream before answering.

    A client still writing when the refusal arrives sees grpc's local "Internal error
    from Core" instead of our status (the edge would answer 500). Small uploads are
    read to their end; a large one is answered after DRAIN_MAX_BYTES or DRAIN_MAX_S, and
    a client that pauses for DRAIN_IDLE_S (the edge waiting for its go-ahead) at once.
    """
    received = 0
    messages = aiter(request_iterator)
    deadline = asyncio.get_running_loop().time() + DRAIN_MAX_S
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        while received <= DRAIN_MAX_BYTES:
            left = min(DRAIN_IDLE_S, deadline - asyncio.get_running_loop().time())
            if left <= 0:
                return
            item = await asyncio.wait_for(anext(messages), left)
            received += item.ByteSize()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, authorization, rate limit and audit for every FlickrHub RPC."""

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, audit: AuditWriter) -> None:
        self._authn = authenticator
        self._limiter = limiter
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None or policy.is_unchecked(method_path):
            return handler
        rule = policy.rule(method_path)
        if handler.unary_unary is not None or handler.unary_stream is not None:
            deserialize = handler.request_deserializer

            def keep_raw(raw: bytes) -> tuple[bytes, Any]:
                try:
                    return raw, deserialize(raw) if deserialize else raw
                except DecodeError:  # e.g. a Struct nested deeper than protobuf decodes: the client's fault
                    return raw, _UNDECODABLE

            if handler.unary_unary is not None:
                return grpc.unary_unary_rpc_method_handler(
                    self._unary(handler.unary_unary, method_path, rule),
                    request_deserializer=keep_raw,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, method_path, rule),
                request_deserializer=keep_raw,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._client_stream(handler.stream_unary, method_path, rule),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # bidi streams: FlickrHub has none

    async def _admit(
        self, method_path: str, rule: policy.Rule, context: Context, body_sha256: str, request: Any
    ) -> Caller:
        md = _metadata(context)
        address, trusted = self._authn.client_address(context.peer() or "", md)
        if rule.role == policy.OPEN:
            return Caller(None, address)
        caller = Caller(None, address)
        call = Request(method_path, md, context.peer() or "", body_sha256)
        try:
            caller = await self._authn.authenticate(call, address, trusted)
            method_class = policy.method_class(rule, request)
            decision = await self._limit(caller, method_class)
            if decision.stale:
                # Rotated or revoked since this replica cached the check: verify against the new record.
                caller = await self._authn.authenticate(call, address, trusted, recheck=True)
                decision = await self._limit(caller, method_class)
                if decision.stale:
                    raise Unavailable("the API key is being changed; retry shortly", retry_after_s=1.0)
            key = caller.key
            assert key is not None
            if rule.role == policy.ADMIN and not key.admin:
                raise PermissionDenied("this call needs an admin API key", "ADMIN_REQUIRED")
            if not decision.allowed:
                raise RateLimited(key.key_id, decision.bucket, decision.retry_after_s)
        except FlickrHubError as exc:
            user_id = str(getattr(request, "user_id", "") or "")
            self._audit.record(
                rpc=method_path,
                key_id=caller.key.key_id if caller.key else _claimed_key_id(md),
                client_ip=address,
                outcome=exc.code.name,
                latency_ms=0.0,
                user_id_hashes=[identity.user_id_hash(user_id)] if user_id else [],
                auth=caller.method,
                reason=exc.reason,
            )
            raise
        return caller

    async def _limit(self, caller: Caller, method_class: str) -> Decision:
        assert caller.key is not None
        return await self._limiter.check(caller.key, method_class, caller.epoch)

    def _record(
        self, method_path: str, caller: Caller, started: float, exc: BaseException | None, context: Context
    ) -> None:
        self._audit.record(
            rpc=method_path,
            key_id=caller.key.key_id if caller.key else "",
            client_ip=caller.client_ip,
            outcome=_outcome(exc, context),
            latency_ms=(time.perf_counter() - started) * 1000,
            # The entry keeps the first user acted for (a batch's others are in its jobs).
            user_id_hashes=[identity.user_id_hash(caller.acted_for[0])] if caller.acted_for else [],
            auth=caller.method,
            reason=exc.reason if isinstance(exc, FlickrHubError) else "",
        )

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], method_path: str, rule: policy.Rule
    ) -> Callable[..., Awaitable[Any]]:
        async def handler(wrapped: tuple[bytes, Any], context: Context) -> Any:
            raw, request = wrapped
            _decodable(request)
            started = time.perf_counter()
            caller = await self._admit(method_path, rule, context, hashlib.sha256(raw).hexdigest(), request)
            token = identity.current.set(caller)
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                identity.current.reset(token)
                self._record(method_path, caller, started, failure, context)

        return handler

    def _server_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method_path: str, rule: policy.Rule
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handler(wrapped: tuple[bytes, Any], context: Context) -> AsyncIterator[Any]:
            raw, request = wrapped
            _decodable(request)
            started = time.perf_counter()
            caller = await self._admit(method_path, rule, context, hashlib.sha256(raw).hexdigest(), request)
            token = identity.current.set(caller)
            failure: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                # A generator may be closed from another context; the RPC's task ends anyway.
                with contextlib.suppress(ValueError):
                    identity.current.reset(token)
                self._record(method_path, caller, started, failure, context)

        return handler

    def _client_stream(
        self, behavior: Callable[..., Awaitable[Any]], method_path: str, rule: policy.Rule
    ) -> Callable[..., Awaitable[Any]]:
        async def handler(request_iterator: Any, context: Context) -> Any:
            started = time.perf_counter()
            # A client stream's payload is not covered by a signature (see common.signing).
            try:
                caller = await self._admit(method_path, rule, context, signing.EMPTY_SHA256, None)
            except FlickrHubError:
                await _drain(request_iterator)
                raise
            token = identity.current.set(caller)
            failure: BaseException | None = None
            try:
                return await behavior(request_iterator, context)
            except FlickrHubError as exc:
                failure = exc
                await _drain(request_iterator)  # refused mid-stream: the same reason as above
                raise
            except BaseException as exc:
                failure = exc
                raise
            finally:
                identity.current.reset(token)
                self._record(method_path, caller, started, failure, context)

        return handler
