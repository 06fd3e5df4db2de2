"""The OpenAPI 3.0.3 document of the REST edge, generated from the protos (pure but for reading comments).

Nothing is written twice: operations come from each method's google.api.http rule
and its additional_bindings through the edge's own route builders
(`routes.method_routes`, `routes.method_upload_routes`), schemas from the message
descriptors (`edge.openapi_schemas`, which mirrors `edge.transcode`), descriptions
from the proto comments (`edge.proto_comments`), error responses from the
gRPC → HTTP table of `edge.status`, and the RPCs that need no credential from the
contract's `(flickrhub.v1.no_credential)` option. A service added to the edge's
PROTO_MODULES appears here with no change.

What the edge really sends, per route kind:
- unary: `application/json` of the response message (or its `response_body` field);
- server streaming: `application/x-ndjson`, one `{"result": <message>}` per line and a
  final `{"error": <Status>}` line if the call fails after the first message;
- client streaming (`oneof {job, chunk, end}`): `multipart/form-data` in, with a JSON `job`
  part followed by a `photo` file part;
- errors: `{"code", "message", "details"}` (google.rpc.Status, details as JSON with `@type`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.api import annotations_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from edge import envelope, routes, status
from edge.openapi_schemas import Schema, SchemaBuilder, is_map, is_well_known, ref
from edge.proto_comments import DESCRIPTOR_SET_NAME, Comments
from flickrhub.v1 import access_pb2

OPENAPI_VERSION = "3.0.3"
STATUS_SCHEMA = "google.rpc.Status"
LEGACY_ERROR_SCHEMA = "LegacyError"
# Paths the edge serves outside the protos; they need no credential.
PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs")
NDJSON = "application/x-ndjson"
_JSON = "application/json"
# Error statuses every operation documents (besides `default`); body routes add 413 and 415.
_ERROR_STATUSES = (400, 401, 403, 404, 409, 429, 503, 504)
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_ERROR_DETAILS = ("RetryInfo", "BadRequest", "QuotaFailure", "ErrorInfo", "PreconditionFailure")
# Query fields come from messages nested at most this deep (a guard against recursive messages).
_MAX_QUERY_DEPTH = 4
# Well-known message types a query parameter can carry (as their JSON string form).
_QUERY_WELL_KNOWN = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
    | {f"google.protobuf.{w}Value" for w in ("String", "Bool", "Int32", "UInt32", "Int64", "UInt64")}
    | {f"google.protobuf.{w}Value" for w in ("Float", "Double", "Bytes")}
)

_HMAC_HOW = (
    "HMAC request signing instead of sending the key: all four headers `x-api-key-id`, `x-timestamp`, "
    "`x-nonce` and `x-signature` together. The signature is `v1=<hex HMAC-SHA256>` keyed with the "
    "key's signing secret over the lines METHOD, PATH, SORTED_QUERY, SHA256_HEX(BODY), TIMESTAMP and "
    "NONCE joined by newlines (docs/api/authentication.md)."
)
SECURITY_SCHEMES: dict[str, Schema] = {
    "BearerApiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "fhk_<key id>_<secret>",
        "description": "An API key sent as `Authorization: Bearer fhk_…`.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same API key sent as `x-api-key: fhk_…`.",
    },
    "HmacKeyId": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key-id",
        "description": "Signed requests: the key's id (the part between `fhk_` and the next `_`). "
        + _HMAC_HOW,
    },
    "HmacTimestamp": {
        "type": "apiKey",
        "in": "header",
        "name": "x-timestamp",
        "description": "Signed requests: Unix seconds, within ±5 minutes of the server's clock.",
    },
    "HmacNonce": {
        "type": "apiKey",
        "in": "header",
        "name": "x-nonce",
        "description": "Signed requests: 8-64 of `A-Z a-z 0-9 _ -`, used once within the clock-skew window.",
    },
    "HmacSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "x-signature",
        "description": "Signed requests: `v1=<hex HMAC-SHA256>`. " + _HMAC_HOW,
    },
}
# Any one of these satisfies an operation: a bearer key, the key in x-api-key, or all four HMAC headers.
SECURITY: list[dict[str, list[str]]] = [
    {"BearerApiKey": []},
    {"ApiKeyHeader": []},
    {"HmacKeyId": [], "HmacTimestamp": [], "HmacNonce": [], "HmacSignature": []},
]


def default_comment_files(modules: Iterable[routes.ProtoModule]) -> list[Path]:
    """The descriptor sets beside the modules' files (scripts/gen_protos.py writes one per package)."""
    folders = {Path(f).parent for m in modules if (f := getattr(m, "__file__", None))}
    return sorted(folder / DESCRIPTOR_SET_NAME for folder in folders)


def build_document(
    modules: Iterable[routes.ProtoModule],
    *,
    title: str,
    version: str,
    comments: Comments | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of every HTTP rule of every service in `modules`.

    `comments` defaults to the descriptor sets beside the modules.
    """
    modules = list(modules)
    if comments is None:
        comments = Comments.load(default_comment_files(modules))
    builder = SchemaBuilder(comments)
    paths, tags = _operations(builder, modules)
    for path, item in _public_paths().items():
        paths.setdefault(path, {}).update(item)
    _error_components(builder)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": _INFO_DESCRIPTION},
        "servers": [{"url": "/"}],
        "tags": tags,
        "security": SECURITY,
        "paths": dict(paths),
        "components": {
            "schemas": dict(sorted(builder.components.items())),
            "responses": _error_responses(),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


_INFO_DESCRIPTION = (
    "FlickrHub's REST edge: every operation is a gRPC method transcoded by its google.api.http "
    "rule (this document is generated from the protos). JSON uses the proto field names; enums "
    "are their names; 64-bit integers are strings; fields without presence are always present "
    "in answers. Errors are `{code, message, details}` (google.rpc.Status; `code` is the gRPC "
    "code) with google.rpc details such as RetryInfo, BadRequest and QuotaFailure; a RetryInfo "
    "also sets `Retry-After`. Request headers `X-Idempotency-Key`, `X-Request-Id` and "
    "`grpc-timeout` (the call's deadline, e.g. `5S`) are honoured; every answer carries `X-Request-Id`."
)


def _operations(
    builder: SchemaBuilder, modules: Iterable[routes.ProtoModule]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Every operation by path and verb, and a tag for each service that has one."""
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    tags: list[dict[str, str]] = []
    used_ids: set[str] = set()
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            operations = 0
            for method in service.methods:
                for verb, path, operation in _method_operations(builder, service, method):
                    operation["operationId"] = _unique(operation["operationId"], used_ids)
                    paths[path][verb.lower()] = operation
                    operations += 1
            if operations:
                tags.append(_tag(service.name, builder.comments.get(service.full_name)))
    return paths, tags


def _unique(operation_id: str, used: set[str]) -> str:
    candidate, n = operation_id, 1
    while candidate in used:
        n += 1
        candidate = f"{operation_id}_{n}"
    used.add(candidate)
    return candidate


def _tag(name: str, text: str) -> dict[str, str]:
    return {"name": name, "description": text} if text else {"name": name}


_Operations = list[tuple[str, str, dict[str, Any]]]  # (verb, path, operation)


def _method_operations(
    builder: SchemaBuilder, service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor
) -> _Operations:
    """The operations of a method's HTTP bindings (none without a rule, nor for a bidirectional stream)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http) or (
        method.client_streaming and method.server_streaming
    ):
        return []
    if method.client_streaming:
        out = _upload_operations(builder, service, method)
    else:
        out = _json_operations(builder, service, method)
    if options.Extensions[access_pb2.no_credential]:
        # The contract marks the RPCs that need no credential (Flickr's OAuth redirect).
        for _, _, operation in out:
            operation["security"] = []
    return out


def _upload_operations(
    builder: SchemaBuilder, service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor
) -> _Operations:
    out = []
    for upload in routes.method_upload_routes(service, method):
        operation = _operation(service, method, builder.comments.get(method.full_name))
        operation["requestBody"] = _multipart_body(builder, method)
        operation["responses"] = _responses(builder, method, "", with_body=True)
        out.append((upload.verb, upload.path, operation))
    return out


def _json_operations(
    builder: SchemaBuilder, service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor
) -> _Operations:
    out = []
    for route in routes.method_routes(service, method):
        operation = _operation(service, method, builder.comments.get(method.full_name))
        fields = route.template.field_paths
        parameters = [_path_parameter(builder, method.input_type, p) for p in fields]
        if route.body != "*":
            excluded = {p.split(".", 1)[0] for p in fields} | ({route.body} if route.body else set())
            parameters += _query_parameters(builder, method.input_type, "", frozenset(excluded), ())
        if "idempotency_key" in method.input_type.fields_by_name:
            parameters.append(_IDEMPOTENCY_HEADER)
        if parameters:
            operation["parameters"] = parameters
        if route.body:
            operation["requestBody"] = _json_body(builder, method.input_type, route.body, fields)
        shape = envelope.for_path(route.template.source)  # the edge's one rule for the answer shape
        operation["responses"] = _responses(
            builder,
            method,
            route.response_body,
            with_body=bool(route.body),
            legacy=shape is envelope.LEGACY,
            success=route.success_status,
        )
        out.append((route.verb, _openapi_path(route.template.source, fields), operation))
    return out


def _operation(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, comment: str
) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": [service.name], "operationId": f"{service.name}_{method.name}"}
    summary = comment.split("\n\n", 1)[0].replace("\n", " ")
    operation["summary"] = summary or method.name
    rpc = f"gRPC: `{method.full_name}`."
    operation["description"] = f"{comment}\n\n{rpc}" if comment else rpc
    return operation


_IDEMPOTENCY_HEADER: dict[str, Any] = {
    "name": "X-Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Same as the `idempotency_key` field: a retry with the same key returns the first answer.",
}


def _openapi_path(source: str, fields: Iterable[str]) -> str:
    """`/v1/{name=shelves/*}` → `/v1/{name}`; verbs stay literal (`/v1/jobs/{job_id}:watch`)."""
    out = source
    for field in fields:
        start = out.index("{" + field)
        out = out[:start] + "{" + field + "}" + out[out.index("}", start) + 1 :]
    return out


def _resolve(message_type: descriptor.Descriptor, path: str) -> descriptor.FieldDescriptor:
    field: descriptor.FieldDescriptor | None = None
    current: descriptor.Descriptor | None = message_type
    for name in path.split("."):
        assert current is not None  # routes.method_routes checked every path variable
        field = current.fields_by_name[name]
        current = field.message_type
    assert field is not None
    return field


def _path_parameter(builder: SchemaBuilder, message_type: descriptor.Descriptor, path: str) -> dict[str, Any]:
    field = _resolve(message_type, path)
    parameter: dict[str, Any] = {
        "name": path,
        "in": "path",
        "required": True,
        "schema": builder.scalar(field),
    }
    text = builder.comments.get(field.full_name)
    if text:
        parameter["description"] = text
    return parameter


def _query_parameters(
    builder: SchemaBuilder,
    message_type: descriptor.Descriptor,
    prefix: str,
    excluded: frozenset[str],
    seen: tuple[str, ...],
) -> list[dict[str, Any]]:
    """grpc-gateway's query form: every field not bound elsewhere, nested ones as `a.b`."""
    out: list[dict[str, Any]] = []
    for field in message_type.fields:
        if not prefix and field.name in excluded:
            continue
        name = prefix + field.name
        nested = field.message_type
        if is_map(field):
            continue  # the edge refuses maps in the query string
        if nested is not None and nested.full_name not in _QUERY_WELL_KNOWN:
            if field.is_repeated or is_well_known(nested) or len(seen) >= _MAX_QUERY_DEPTH:
                continue  # no query form for repeated messages and free JSON
            if nested.full_name not in seen:
                out += _query_parameters(builder, nested, f"{name}.", excluded, (*seen, nested.full_name))
            continue
        schema = builder.scalar(field)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        if field.is_repeated:
            parameter.update(schema={"type": "array", "items": schema}, style="form", explode=True)
        else:
            parameter["schema"] = schema
        text = builder.comments.get(field.full_name)
        if text:
            parameter["description"] = text
        out.append(parameter)
    return out


def _json_body(
    builder: SchemaBuilder, message_type: descriptor.Descriptor, body: str, path_fields: Iterable[str]
) -> dict[str, Any]:
    if body == "*":
        # Path variables win over the body (edge.transcode), so top-level ones are left out of it.
        bound = frozenset(p for p in path_fields if "." not in p)
        schema = builder.message(message_type, exclude=bound)
        required = any(f.name not in bound for f in message_type.fields)
    else:
        schema = builder.field(message_type.fields_by_name[body])
        required = False
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _multipart_body(builder: SchemaBuilder, method: descriptor.MethodDescriptor) -> dict[str, Any]:
    job_type = method.input_type.fields_by_name[routes.JOB_PART].message_type
    assert job_type is not None  # routes.method_upload_routes checked the `oneof {job, chunk, end}` form
    schema = {
        "type": "object",
        "required": [routes.JOB_PART, routes.PHOTO_PART],
        "additionalProperties": False,  # the edge refuses any other part
        "properties": {
            routes.JOB_PART: builder.message(job_type),
            routes.PHOTO_PART: {"type": "string", "format": "binary"},
        },
    }
    encoding = {routes.JOB_PART: {"contentType": _JSON}, routes.PHOTO_PART: {"contentType": "*/*"}}
    content = {"multipart/form-data": {"schema": schema, "encoding": encoding}}
    return {
        "required": True,
        "description": f"The `{routes.JOB_PART}` part (JSON), then the `{routes.PHOTO_PART}` file part.",
        "content": content,
    }


def _responses(
    builder: SchemaBuilder,
    method: descriptor.MethodDescriptor,
    response_body: str,
    *,
    with_body: bool,
    legacy: bool = False,
    success: int = 200,
) -> dict[str, Any]:
    output = method.output_type
    body_field = output.fields_by_name[response_body] if response_body else None
    schema = builder.field(body_field) if body_field is not None else builder.message(output)
    statuses = sorted({*_ERROR_STATUSES, *((413, 415) if with_body else ())})
    if legacy and not method.server_streaming:
        ok = {
            "description": "OK (the original API's envelope)",
            "content": {_JSON: {"schema": _legacy_success(builder, output)}},
        }
        return {
            str(success): ok,
            **{str(code): {"$ref": f"#/components/responses/LegacyError{code}"} for code in statuses},
            "default": {"$ref": "#/components/responses/LegacyError"},
        }
    if method.server_streaming:
        line = {
            "type": "object",
            "properties": {"result": schema, "error": ref(STATUS_SCHEMA)},
            "description": 'One object per line: `{"result": …}` per message, `{"error": …}` on failure.',
        }
        ok = {
            "description": "A stream of messages, one per line (NDJSON).",
            "content": {NDJSON: {"schema": line}},
        }
    else:
        ok = {"description": "OK", "content": {_JSON: {"schema": schema}}}
    return {
        str(success): ok,
        **{str(code): {"$ref": f"#/components/responses/Error{code}"} for code in statuses},
        "default": {"$ref": "#/components/responses/Error"},
    }


_EDGE_ONLY = {413: "The request body is larger than the limit.", 415: "Unsupported request content type."}


def _error_responses() -> dict[str, Any]:
    codes_by_http: dict[int, list[str]] = defaultdict(list)
    for code in grpc.StatusCode:
        if code != grpc.StatusCode.OK:
            codes_by_http[status.http_status(code)].append(code.name)
    out: dict[str, Any] = {}
    for prefix, schema_name in (("Error", STATUS_SCHEMA), ("LegacyError", LEGACY_ERROR_SCHEMA)):
        out.update(_error_responses_of(prefix, schema_name, codes_by_http))
    return out


def _error_responses_of(prefix: str, schema_name: str, codes_by_http: dict[int, list[str]]) -> dict[str, Any]:
    content = {_JSON: {"schema": ref(schema_name)}}
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying (set when the error carries a RetryInfo).",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    out: dict[str, Any] = {prefix: {"description": "An error.", "content": content}}
    for code in sorted({*_ERROR_STATUSES, *_EDGE_ONLY}):
        text = _EDGE_ONLY.get(code) or "gRPC " + " or ".join(codes_by_http[code]) + "."
        response: dict[str, Any] = {"description": text, "content": content}
        if code in _RETRY_AFTER_STATUSES:
            response["headers"] = retry_after
        out[f"{prefix}{code}"] = response
    return out


def _error_components(builder: SchemaBuilder) -> None:
    for name in _ERROR_DETAILS:
        builder.message(error_details_pb2.DESCRIPTOR.message_types_by_name[name])
    grpc_codes = ", ".join(f"{c.value[0]} {c.name}" for c in grpc.StatusCode)
    builder.components[STATUS_SCHEMA] = {
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": f"The gRPC status code: {grpc_codes}.",
            },
            "message": {"type": "string", "description": "What went wrong, for a developer."},
            "error_id": _ERROR_ID,
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["@type"],
                    "properties": {"@type": {"type": "string"}},
                    "additionalProperties": True,
                    "description": "A google.rpc error detail with its `@type`, e.g. "
                    + ", ".join(f"`type.googleapis.com/google.rpc.{n}`" for n in _ERROR_DETAILS)
                    + " (their fields: the components of those names).",
                },
            },
        },
        "description": "The error body of every failed call (v1 API).",
    }
    builder.components[LEGACY_ERROR_SCHEMA] = _legacy_error()


_ERROR_ID: Schema = {
    "type": "string",
    "description": "Set on 5xx answers: the same id is in the server's log.",
}


def _legacy_error() -> Schema:
    codes = sorted(
        {*envelope.LEGACY_CODES_BY_REASON.values(), *envelope.LEGACY_CODES_BY_STATUS.values()}
        | {"ERR_INTERNAL", "ERR_REQUEST"}
    )
    violation = {
        "type": "object",
        "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
    }
    error = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "The original API's code: " + ", ".join(codes) + "."},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": violation,
                "description": "Field violations of an invalid request.",
            },
            "error_id": _ERROR_ID,
        },
    }
    return {
        "type": "object",
        "required": ["request_id", "data", "error"],
        "properties": {
            "request_id": {"type": "string"},
            "data": {"description": "Always null on errors."},
            "error": error,
        },
        "description": "The error body of the original FlickrHub API's routes (under /api/).",
    }


def _legacy_success(builder: SchemaBuilder, output: descriptor.Descriptor) -> Schema:
    """`{"request_id", "data": <reply, every field present, unset ones null>, "error": null}`."""
    properties = {}
    for field in output.fields:
        schema = builder.field(field)
        if (field.message_type is not None and not field.is_repeated) or field.containing_oneof is not None:
            # Unset message and oneof fields print as null here (edge.envelope.LegacyEnvelope).
            schema = (
                {"allOf": [schema], "nullable": True}
                if "$ref" in schema or "allOf" in schema
                else {**schema, "nullable": True}
            )
        properties[field.name] = schema
    data = {"type": "object", "required": [f.name for f in output.fields], "properties": properties}
    text = builder.comments.get(output.full_name)
    if text:
        data["description"] = text
    return {
        "type": "object",
        "required": ["request_id", "data", "error"],
        "properties": {
            "request_id": {"type": "string"},
            "data": data,
            "error": {"description": "Always null on success."},
        },
    }


def _public_paths() -> dict[str, dict[str, Any]]:
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "description": "ok, SERVING, draining or why not."}},
    }

    def operation(
        op_id: str, summary: str, content: dict[str, Any], *, ready: bool = False
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
        if ready:
            responses["503"] = {
                "description": "Not ready (draining, or the gateway is not serving).",
                "content": content,
            }
        return {
            "get": {
                "tags": ["Edge"],
                "operationId": op_id,
                "summary": summary,
                "security": [],
                "responses": responses,
            }
        }

    return {
        "/healthz": operation(
            "Edge_Healthz", "Liveness: the edge process answers.", {_JSON: {"schema": health}}
        ),
        "/readyz": operation(
            "Edge_Readyz", "Readiness: the gateway says SERVING.", {_JSON: {"schema": health}}, ready=True
        ),
        "/openapi.json": operation("Edge_OpenApi", "This document.", {_JSON: {"schema": {"type": "object"}}}),
        "/docs": operation(
            "Edge_Docs", "Swagger UI for this document.", {"text/html": {"schema": {"type": "string"}}}
        ),
    }
