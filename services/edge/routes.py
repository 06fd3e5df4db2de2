"""The REST route table, derived from the google.api.http options of the proto services.

Nothing here is written by hand: every route comes from a method's HttpRule and
its additional_bindings, read once at start. JSON routes (`Route`) are the unary
and server-streaming methods; upload routes (`UploadRoute`) the client-streaming
ones whose request is `oneof {job, chunk, end}`, served as multipart forms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor, message, message_factory

from edge import templates
from flickrhub.v1 import http_options_pb2

_VERBS = ("get", "put", "post", "delete", "patch")
# The multipart form of an upload route: a `job` part (JSON of the request's `job` field), then a
# `photo` file part (sent as `chunk` messages), then the request's `end` (its size and SHA-256).
JOB_PART = "job"
PHOTO_PART = "photo"
CHUNK_FIELD = "chunk"
END_FIELD = "end"

log = logging.getLogger(__name__)


class ProtoModule(Protocol):
    """A generated `*_pb2` module (anything with a file DESCRIPTOR)."""

    DESCRIPTOR: descriptor.FileDescriptor


class RouteError(ValueError):
    """A google.api.http option the edge cannot serve."""


@dataclass(frozen=True)
class Route:
    """One REST binding of one gRPC method, with everything a request needs precomputed."""

    verb: str
    template: templates.PathTemplate
    body: str
    response_body: str
    method_path: str
    request_cls: type[message.Message]
    response_cls: type[message.Message]
    server_streaming: bool
    # HTTP status of a successful answer: the (flickrhub.v1.http_success_status) option, else 200.
    success_status: int = 200

    @property
    def name(self) -> str:
        """Span and metric name, e.g. `POST /v1/jobs`."""
        return f"{self.verb} {self.template.source}"


def build(modules: Iterable[ProtoModule]) -> list[Route]:
    """Every route of every service in `modules`, most specific template first."""
    routes: list[Route] = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                routes.extend(method_routes(service, method))
    _check_unique(routes)
    # Verb-suffixed templates first (`/v1/jobs/{id}:watch` before `/v1/jobs/{id}`),
    # then more literal segments; sort() is stable, so declaration order breaks ties.
    routes.sort(key=lambda r: (not r.template.verb, -r.template.literal_count))
    return routes


def method_routes(service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor) -> list[Route]:
    """The JSON routes of one method (none for a client stream: see `method_upload_routes`)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    if method.client_streaming:
        # Client-streaming uploads are served by the edge's multipart upload handler, not by JSON routes.
        log.info("%s.%s: client streaming, left to the upload handler", service.full_name, method.name)
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    rules = [rule, *rule.additional_bindings]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    success_status = options.Extensions[http_options_pb2.http_success_status] or 200
    out = []
    for binding in rules:
        verb, path = _pattern(binding, method)
        template = templates.parse(path)
        _check_fields(method, template.field_paths, binding.body, binding.response_body)
        out.append(
            Route(
                verb=verb,
                template=template,
                body=binding.body,
                response_body=binding.response_body,
                method_path=f"/{service.full_name}/{method.name}",
                request_cls=request_cls,
                response_cls=response_cls,
                server_streaming=method.server_streaming,
                success_status=success_status,
            )
        )
    return out


def _pattern(rule: http_pb2.HttpRule, method: descriptor.MethodDescriptor) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind in _VERBS:
        return kind.upper(), str(getattr(rule, kind))
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    raise RouteError(f"{method.full_name}: HttpRule without a pattern")


def _check_fields(
    method: descriptor.MethodDescriptor, paths: Sequence[str], body: str, response_body: str
) -> None:
    for path in paths:
        target = _resolve(method.input_type, path)
        if target is None or target.type == descriptor.FieldDescriptor.TYPE_MESSAGE or _repeated(target):
            raise RouteError(f"{method.full_name}: path variable {path!r} is not a singular scalar field")
    if body not in ("", "*") and body not in method.input_type.fields_by_name:
        raise RouteError(f"{method.full_name}: body field {body!r} not in {method.input_type.name}")
    if response_body and response_body not in method.output_type.fields_by_name:
        raise RouteError(f"{method.full_name}: response_body {response_body!r} not a field of the response")


def _resolve(message_type: descriptor.Descriptor, path: str) -> descriptor.FieldDescriptor | None:
    current: descriptor.Descriptor | None = message_type
    found: descriptor.FieldDescriptor | None = None
    for name in path.split("."):
        if current is None:
            return None
        found = current.fields_by_name.get(name)
        if found is None:
            return None
        current = found.message_type
    return found


def _repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _check_unique(routes: Sequence[Route]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        key = (route.verb, route.template.source)
        if key in seen:
            raise RouteError(f"{route.name} is bound by both {seen[key]} and {route.method_path}")
        seen[key] = route.method_path


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


def upload_routes(modules: Iterable[ProtoModule]) -> list[UploadRoute]:
    """The bindings of every client-streaming method with an HTTP rule."""
    found = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming:
                    found.extend(method_upload_routes(service, method))
    return found


def method_upload_routes(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor
) -> list[UploadRoute]:
    """The upload routes of one client-streaming method (none without an HTTP rule)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    if method.server_streaming:
        raise RouteError(f"{method.full_name}: bidirectional streams have no REST form here")
    job, end = _check_upload_fields(method)
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    out = []
    for binding in [rule, *rule.additional_bindings]:
        kind = binding.WhichOneof("pattern")
        if kind not in _VERBS:
            raise RouteError(f"{method.full_name}: unsupported HttpRule pattern {kind!r}")
        path = str(getattr(binding, kind))
        if templates.parse(path).field_paths:
            raise RouteError(f"{method.full_name}: upload paths take no variables ({path})")
        out.append(
            UploadRoute(
                verb=kind.upper(),
                path=path,
                method_path=f"/{service.full_name}/{method.name}",
                request_cls=message_factory.GetMessageClass(method.input_type),
                job_cls=message_factory.GetMessageClass(job),
                end_cls=message_factory.GetMessageClass(end),
                response_cls=message_factory.GetMessageClass(method.output_type),
            )
        )
    return out


def _check_upload_fields(
    method: descriptor.MethodDescriptor,
) -> tuple[descriptor.Descriptor, descriptor.Descriptor]:
    """The `job` and `end` message types of a `oneof {job, chunk, end {size, sha256}}` request."""
    fields = method.input_type.fields_by_name
    job, chunk, end = fields.get(JOB_PART), fields.get(CHUNK_FIELD), fields.get(END_FIELD)
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
        raise RouteError(
            f"{method.full_name}: a client stream needs `oneof {{job, chunk, end {{size, sha256}}}}` for REST"
        )
    return job.message_type, end.message_type
