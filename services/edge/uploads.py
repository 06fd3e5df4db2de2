"""Client-streaming routes over REST: `multipart/form-data` in, the gRPC client stream out.

Routes come from the google.api.http options of client-streaming methods whose
request is `oneof {job, chunk, end}` (UploadJob: `POST /v1/uploads`). The body is
read part by part with aiohttp's multipart reader, never whole:

- a `job` part first: JSON of SubmitJobRequest (proto field names, unknown fields
  ignored, as every other edge route);
- then a `photo` file part, forwarded as it arrives in `chunk` messages of at
  most 1 MiB, counted and hashed on the way; nothing may follow it;
- once the body has ended cleanly, an `end` message with the part's size and
  SHA-256. The gateway accepts the job only with a matching `end`, so a body cut
  short never becomes a job with part of the photo.

Refusals: a verb other than the binding's → 405 with Allow; a content type other
than multipart/form-data → 415; a body over the limit (EDGE_UPLOAD_MAX_BYTES) →
413, from Content-Length before any byte is read, else as soon as the count
passes it; a missing, misplaced or malformed part → 400. The gateway's answer
is rendered like every edge answer (status mapping, `{"code","message","details"}`).

Two rules keep refusals clean while a large body is still arriving:
- after the `job` message the edge waits for the gateway's initial metadata (its
  go-ahead) before sending a byte of the photo, so a refused credential, user or
  job comes back with its own status (a client still writing when a call ends
  sees only grpc's local "Internal error from Core");
- an upload given up after the go-ahead (413, a malformed or broken body) is
  half-closed without `end`, which the gateway refuses and cleans up; the edge
  waits for that answer in the background and cancels only if none comes. (A
  cancel alone would also be safe now, since gRPC may show it to the server as a
  clean end of the stream, which lacks `end` all the same; the refusal just ends
  the call sooner and without an error in the gateway's log.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from google.api import annotations_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor, message, message_factory
from opentelemetry import propagate, trace

from edge import app as edge_app
from edge import routes, status, templates, transcode

log = logging.getLogger("edge")

JOB_PART = "job"
PHOTO_PART = "photo"
# The request field of the stream's last message: the photo's size and SHA-256.
END_PART = "end"
CHUNK_BYTES = 1024 * 1024
# A SubmitJobRequest as JSON: 64 params of up to 4 KiB and 16 KiB of meta fit well within this.
MAX_JOB_BYTES = 1024 * 1024
_MULTIPART = "multipart/form-data"
# How long an abandoned upload may take to be refused by the gateway before it is cancelled.
ABANDON_TIMEOUT_S = 10.0

_tracer = trace.get_tracer("flickrhub.edge")
# gateway.uploads.GO_AHEAD_KEY: initial metadata that says "job accepted, send the photo".
GO_AHEAD_KEY = "x-fh-upload-go-ahead"
# What grpc reports for a write the server's early answer made fail (the real status is lost).
_CORE_WRITE_FAILURE = "Internal error from Core"


@dataclass(frozen=True)
class UploadRoute:
    """One REST binding of a client-streaming `oneof {job, chunk, end}` method."""

    verb: str
    path: str
    method_path: str
    request_cls: type[message.Message]
    job_cls: type[message.Message]
    end_cls: type[message.Message]
    response_cls: type[message.Message]

    @property
    def name(self) -> str:
        """Span and metric name, e.g. `POST /v1/uploads`."""
        return f"{self.verb} {self.path}"


def upload_routes(modules: Iterable[routes.ProtoModule]) -> list[UploadRoute]:
    """The bindings of every client-streaming method with an HTTP rule."""
    found = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not method.client_streaming or not options.HasExtension(annotations_pb2.http):
                    continue
                found.extend(_method_routes(service, method, options.Extensions[annotations_pb2.http]))
    return found


def _method_routes(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, rule: Any
) -> list[UploadRoute]:
    if method.server_streaming:
        raise routes.RouteError(f"{method.full_name}: bidirectional streams have no REST form here")
    fields = method.input_type.fields_by_name
    job, chunk, end = fields.get(JOB_PART), fields.get("chunk"), fields.get(END_PART)
    end_fields = end.message_type.fields_by_name if end is not None and end.message_type is not None else {}
    if (
        job is None
        or job.message_type is None
        or chunk is None
        or chunk.type != chunk.TYPE_BYTES
        or end is None
        or end.message_type is None
        or set(end_fields) != {"size", "sha256"}
    ):
        raise routes.RouteError(
            f"{method.full_name}: a client stream needs `oneof {{job, chunk, end {{size, sha256}}}}` for REST"
        )
    out = []
    for binding in [rule, *rule.additional_bindings]:
        kind = binding.WhichOneof("pattern")
        if kind not in ("get", "put", "post", "delete", "patch"):
            raise routes.RouteError(f"{method.full_name}: unsupported HttpRule pattern {kind!r}")
        path = str(getattr(binding, kind))
        if templates.parse(path).field_paths:
            raise routes.RouteError(f"{method.full_name}: upload paths take no variables ({path})")
        out.append(
            UploadRoute(
                verb=kind.upper(),
                path=path,
                method_path=f"/{service.full_name}/{method.name}",
                request_cls=message_factory.GetMessageClass(method.input_type),
                job_cls=message_factory.GetMessageClass(job.message_type),
                end_cls=message_factory.GetMessageClass(end.message_type),
                response_cls=message_factory.GetMessageClass(method.output_type),
            )
        )
    return out


class _Refused(Exception):
    """Answer with this error (and cancel the call if one was started)."""

    def __init__(self, http: int, message_text: str) -> None:
        super().__init__(message_text)
        self.error = status.error(grpc.StatusCode.INVALID_ARGUMENT, message_text)
        self.error.status = http


class UploadHandler:
    """Serves one upload route through the edge's channel, metadata rules and metrics."""

    def __init__(self, edge: edge_app.Edge, route: UploadRoute, max_body: int) -> None:
        self.edge = edge
        self.route = route
        self.max_body = max_body
        self._job = transcode.RequestBuilder(route.job_cls, "*", ())
        self._call: Any = None
        self._abandoning: set[asyncio.Task[None]] = set()

    def _callable(self) -> Any:
        if self._call is None:
            assert self.edge.channel is not None, "the edge channel opens at startup"
            self._call = self.edge.channel.stream_unary(
                self.route.method_path,
                request_serializer=self.route.request_cls.SerializeToString,
                response_deserializer=self.route.response_cls.FromString,
            )
        return self._call

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Stream one multipart upload to the gateway and render its answer."""
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        response: web.StreamResponse
        if request.method != self.route.verb:
            err = status.error(grpc.StatusCode.UNIMPLEMENTED, f"method {request.method} not allowed")
            err.status = 405
            err.headers["Allow"] = self.route.verb
            response = edge_app._error_response(err, request_id)
            self.edge._observe(self.route.name, response.status, started)
            return response
        with _tracer.start_as_current_span(
            self.route.name,
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
            record_exception=False,
        ) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", self.route.path)
            span.set_attribute("rpc.method", self.route.method_path)
            try:
                response = await self._upload(request, request_id)
            except _Refused as refused:
                response = edge_app._error_response(refused.error, request_id)
            except edge_app._Reject as rejected:
                response = edge_app._error_response(rejected.error, request_id)
            except Exception:
                log.exception("edge failed on %s", self.route.name)
                err = status.error(grpc.StatusCode.INTERNAL, "internal error in the REST edge")
                response = edge_app._error_response(err, request_id)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        self.edge._observe(self.route.name, response.status, started)
        return response

    async def _upload(self, request: web.Request, request_id: str) -> web.StreamResponse:
        if request.content_type != _MULTIPART:
            sent = request.headers.get("Content-Type", "")
            raise _Refused(415, f"unsupported content type {sent!r}: send multipart/form-data")
        if request.content_length is not None and request.content_length > self.max_body:
            raise self._too_large()
        metadata, timeout = edge_app._metadata(request, request_id)
        try:
            reader = await request.multipart()
            job_part = await reader.next()
            raw_job = await self._read_job(job_part)
            job = self._job.build({}, raw_job, ())
            photo = await reader.next()
        except transcode.TranscodeError as exc:
            raise _Refused(400, f"`{JOB_PART}` part: {exc}") from None
        except (ValueError, AssertionError, BadHttpMessage) as exc:  # aiohttp's words for a malformed body
            raise _Refused(400, f"malformed multipart body: {exc}") from None
        if not isinstance(photo, BodyPartReader) or photo.name != PHOTO_PART:
            raise _Refused(400, f"a `{PHOTO_PART}` file part must follow the `{JOB_PART}` part")
        call = self._callable()(metadata=metadata, timeout=timeout)
        try:
            await self._send(call, self.route.request_cls(job=job))
            # The gateway's go-ahead, or the (empty) initial metadata of a refusal.
            if (GO_AHEAD_KEY, "1") not in tuple(await call.initial_metadata() or ()):
                await call  # refused: raises its status
                return _bad_gateway("the gateway answered the upload before accepting it", request_id)
            end = await self._stream_photo(call, photo, len(raw_job))
            if await reader.next() is not None:
                raise _Refused(400, f"nothing may follow the `{PHOTO_PART}` part")
            # Only now, with the whole body read, does the edge vouch for the photo.
            await self._send(call, self.route.request_cls(end=end))
            await call.done_writing()
            reply = await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CORE_WRITE_FAILURE:
                return _bad_gateway("the gateway ended the upload before it was complete; retry", request_id)
            return edge_app._error_response(self.edge._rpc_error(exc), request_id)
        except (ValueError, AssertionError, BadHttpMessage) as exc:
            self._abandon(call)
            raise _Refused(400, f"malformed multipart body: {exc}") from None
        except BaseException:
            self._abandon(call)  # the gateway refuses it and removes the blob it was writing
            raise
        return web.Response(
            body=transcode.response_json(reply),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )

    async def _read_job(self, part: BodyPartReader | MultipartReader | None) -> bytes:
        if not isinstance(part, BodyPartReader) or part.name != JOB_PART:
            raise _Refused(400, f"the first part must be `{JOB_PART}` (JSON of SubmitJobRequest)")
        raw = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            raw += chunk
            if len(raw) > self.max_body:
                raise self._too_large()
            if len(raw) > MAX_JOB_BYTES:
                raise _Refused(400, f"the `{JOB_PART}` part is larger than {MAX_JOB_BYTES} bytes")
        if not raw:
            raise _Refused(400, f"the `{JOB_PART}` part is empty")
        return bytes(raw)

    async def _stream_photo(self, call: Any, photo: BodyPartReader, received: int) -> message.Message:
        """Forward the photo part in chunks; its `end` (size, SHA-256), to send once the body is over."""
        pending = bytearray()
        digest = hashlib.sha256()
        size = 0
        while chunk := await photo.read_chunk(CHUNK_BYTES):
            received += len(chunk)
            if received > self.max_body:
                raise self._too_large()  # not a byte more is read; _upload abandons the call
            digest.update(chunk)
            size += len(chunk)
            pending += chunk
            while len(pending) >= CHUNK_BYTES:
                await self._send(call, self.route.request_cls(chunk=bytes(pending[:CHUNK_BYTES])))
                del pending[:CHUNK_BYTES]
        if pending:
            await self._send(call, self.route.request_cls(chunk=bytes(pending)))
        return self.route.end_cls(size=size, sha256=digest.digest())

    @staticmethod
    async def _send(call: Any, item: message.Message) -> None:
        try:
            await call.write(item)
        except asyncio.InvalidStateError:
            await call  # the gateway already answered (a refusal): raise its status
            raise

    def _abandon(self, call: Any) -> None:
        """Half-close a started upload without `end`, which the gateway refuses, in the background."""
        if call.done():
            return
        task = asyncio.get_running_loop().create_task(self._refuse(call))
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    async def _refuse(self, call: Any) -> None:
        try:
            async with asyncio.timeout(ABANDON_TIMEOUT_S):
                await call.done_writing()  # no `end`: refused
                await call
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            pass  # refused (as meant), already over, or stuck
        finally:
            call.cancel()  # no-op once the call has ended

    def _too_large(self) -> _Refused:
        return _Refused(413, f"upload body larger than {self.max_body} bytes")


def _bad_gateway(message_text: str, request_id: str) -> web.StreamResponse:
    err = status.error(grpc.StatusCode.UNAVAILABLE, message_text)
    err.status = 502
    return edge_app._error_response(err, request_id)


def install(app: web.Application, edge: edge_app.Edge, max_body: int) -> None:
    """Route every upload binding to its handler (before the edge's catch-all route)."""
    for route in upload_routes(edge_app.PROTO_MODULES):
        app.router.add_route("*", route.path, UploadHandler(edge, route, max_body).handle)
