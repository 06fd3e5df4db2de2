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
than multipart/form-data → 415; a body over the limit (UPLOAD_MAX_PHOTO_BYTES + 1 MiB) →
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
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from google.protobuf import message
from opentelemetry import propagate, trace

from common.settings import UPLOAD_JOB_PART_BYTES
from edge import envelope, errors, forwarding, metrics, routes, status, transcode
from edge.routes import JOB_PART, PHOTO_PART

log = logging.getLogger("edge")

CHUNK_BYTES = 1024 * 1024
# A SubmitJobRequest as JSON: 64 params of up to 4 KiB and 16 KiB of meta fit well within this
# (the upload body limit, Settings.edge_upload_max_bytes, allows for it beside the photo).
MAX_JOB_BYTES = UPLOAD_JOB_PART_BYTES
_MULTIPART = "multipart/form-data"
# How long an abandoned upload may take to be refused by the gateway before it is cancelled.
ABANDON_TIMEOUT_S = 10.0

_tracer = trace.get_tracer("flickrhub.edge")
# gateway.uploads.GO_AHEAD_KEY: initial metadata that says "job accepted, send the photo".
GO_AHEAD_KEY = "x-fh-upload-go-ahead"
# What grpc reports for a write the server's early answer made fail (the real status is lost).
_CORE_WRITE_FAILURE = "Internal error from Core"
# aiohttp's words for a malformed multipart body.
_MALFORMED = (ValueError, AssertionError, BadHttpMessage)


def _refused(http: int, message_text: str) -> errors.Reject:
    return errors.http_error(http, grpc.StatusCode.INVALID_ARGUMENT, message_text)


class UploadHandler:
    """Serves one upload route on the gateway channel it is bound to, counted in the edge's metrics."""

    def __init__(
        self, route: routes.UploadRoute, max_body: int, request_metrics: metrics.RequestMetrics
    ) -> None:
        self.route = route
        self.max_body = max_body
        self.metrics = request_metrics
        self.channel: grpc.aio.Channel | None = None
        self._job = transcode.RequestBuilder(route.job_cls, "*", ())
        self._call: Any = None
        self._abandoning: set[asyncio.Task[None]] = set()

    def bind(self, channel: grpc.aio.Channel) -> None:
        """Create the route's client-stream callable on the edge's channel."""
        self.channel = channel
        self._call = channel.stream_unary(
            self.route.method_path,
            request_serializer=self.route.request_cls.SerializeToString,
            response_deserializer=self.route.response_cls.FromString,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Stream one multipart upload to the gateway and render its answer."""
        started = time.perf_counter()
        request_id = forwarding.request_id(request)
        if request.method != self.route.verb:
            response = self._not_allowed(request.method, request_id)
        else:
            response = await self._traced(request, request_id)
        self.metrics.observe(self.route.name, response.status, started)
        return response

    def _not_allowed(self, method: str, request_id: str) -> web.StreamResponse:
        err = status.error(grpc.StatusCode.UNIMPLEMENTED, f"method {method} not allowed")
        err.status = 405
        err.headers["Allow"] = self.route.verb
        return envelope.GOOGLE_RPC.error(err, request_id)

    async def _traced(self, request: web.Request, request_id: str) -> web.StreamResponse:
        """The upload inside its server span; every failure becomes an answer."""
        with _tracer.start_as_current_span(
            self.route.name,
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
            record_exception=False,
        ) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", self.route.path)
            span.set_attribute("rpc.method", self.route.method_path)
            response: web.StreamResponse
            try:
                response = await self._upload(request, request_id)
            except errors.Reject as rejected:
                response = envelope.GOOGLE_RPC.error(rejected.error, request_id)
            except Exception:
                log.exception("edge failed on %s", self.route.name)
                err = status.error(grpc.StatusCode.INTERNAL, "internal error in the REST edge")
                response = envelope.GOOGLE_RPC.error(err, request_id)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        return response

    async def _upload(self, request: web.Request, request_id: str) -> web.StreamResponse:
        self._check_head(request)
        metadata, timeout = forwarding.metadata(request, request_id)
        reader, job_bytes, job, photo = await self._read_job(request)
        assert self._call is not None, "upload handlers are bound to the channel at startup"
        call = self._call(metadata=metadata, timeout=timeout)
        try:
            if not await self._go_ahead(call, job):
                await call  # refused: raises its status
                return _bad_gateway("the gateway answered the upload before accepting it", request_id)
            await self._send_photo(call, reader, photo, job_bytes)
            reply = await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CORE_WRITE_FAILURE:
                return _bad_gateway("the gateway ended the upload before it was complete; retry", request_id)
            return envelope.GOOGLE_RPC.error(errors.from_gateway(exc, self.channel), request_id)
        except _MALFORMED as exc:
            self._abandon(call)
            raise _refused(400, f"malformed multipart body: {exc}") from None
        except BaseException:
            self._abandon(call)  # the gateway refuses it and removes the blob it was writing
            raise
        return web.Response(
            body=transcode.response_json(reply),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )

    def _check_head(self, request: web.Request) -> None:
        """415 unless multipart/form-data; 413 when Content-Length is over the limit."""
        if request.content_type != _MULTIPART:
            sent = request.headers.get("Content-Type", "")
            raise _refused(415, f"unsupported content type {sent!r}: send multipart/form-data")
        if request.content_length is not None and request.content_length > self.max_body:
            raise self._too_large()

    async def _read_job(
        self, request: web.Request
    ) -> tuple[MultipartReader, int, message.Message, BodyPartReader]:
        """The body's reader, the `job` part's size and message, and the `photo` part (not yet read)."""
        try:
            reader = await request.multipart()
            raw_job = await self._read_job_part(await reader.next())
            job = self._job.build({}, raw_job, ())
            photo = await reader.next()
        except transcode.TranscodeError as exc:
            raise _refused(400, f"`{JOB_PART}` part: {exc}") from None
        except _MALFORMED as exc:
            raise _refused(400, f"malformed multipart body: {exc}") from None
        if not isinstance(photo, BodyPartReader) or photo.name != PHOTO_PART:
            raise _refused(400, f"a `{PHOTO_PART}` file part must follow the `{JOB_PART}` part")
        return reader, len(raw_job), job, photo

    async def _read_job_part(self, part: BodyPartReader | MultipartReader | None) -> bytes:
        if not isinstance(part, BodyPartReader) or part.name != JOB_PART:
            raise _refused(400, f"the first part must be `{JOB_PART}` (JSON of SubmitJobRequest)")
        raw = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            raw += chunk
            if len(raw) > self.max_body:
                raise self._too_large()
            if len(raw) > MAX_JOB_BYTES:
                raise _refused(400, f"the `{JOB_PART}` part is larger than {MAX_JOB_BYTES} bytes")
        if not raw:
            raise _refused(400, f"the `{JOB_PART}` part is empty")
        return bytes(raw)

    async def _go_ahead(self, call: Any, job: message.Message) -> bool:
        """Send the job; True when the gateway's initial metadata says "send the photo"."""
        await self._send(call, self.route.request_cls(job=job))
        # The gateway's go-ahead, or the (empty) initial metadata of a refusal.
        return (GO_AHEAD_KEY, "1") in tuple(await call.initial_metadata() or ())

    async def _send_photo(
        self, call: Any, reader: MultipartReader, photo: BodyPartReader, received: int
    ) -> None:
        """The photo in chunks, then, once the body has ended cleanly, its `end`; then half-close."""
        end = await self._stream_photo(call, photo, received)
        if await reader.next() is not None:
            raise _refused(400, f"nothing may follow the `{PHOTO_PART}` part")
        # Only now, with the whole body read, does the edge vouch for the photo.
        await self._send(call, self.route.request_cls(end=end))
        await call.done_writing()

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

    def _too_large(self) -> errors.Reject:
        return errors.too_large("upload body", self.max_body)


def _bad_gateway(message_text: str, request_id: str) -> web.StreamResponse:
    err = status.error(grpc.StatusCode.UNAVAILABLE, message_text)
    err.status = 502
    return envelope.GOOGLE_RPC.error(err, request_id)


def install(
    app: web.Application,
    modules: Sequence[routes.ProtoModule],
    max_body: int,
    request_metrics: metrics.RequestMetrics,
) -> list[UploadHandler]:
    """Route every upload binding to its handler (before the edge's catch-all route); bind them at startup."""
    handlers = [UploadHandler(route, max_body, request_metrics) for route in routes.upload_routes(modules)]
    for handler in handlers:
        app.router.add_route("*", handler.route.path, handler.handle)
    return handlers
