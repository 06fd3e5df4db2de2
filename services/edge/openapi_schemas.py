"""JSON Schemas (OpenAPI 3.0 dialect) of protobuf messages, as the edge's JSON mapping renders them.

The mapping mirrors `edge.transcode` (the one place that decides the JSON): proto
field names, enums as their names, 64-bit integers as strings, bytes as base64,
Timestamp as an RFC 3339 string, Duration as `"1.5s"`, Struct/Value/ListValue as
free JSON, maps as objects. Messages become named components (`#/components/schemas/
<full name>`), so nested and recursive messages are referenced, never inlined.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor

from edge.proto_comments import Comments

_FD = descriptor.FieldDescriptor
Schema = dict[str, Any]

_INT64_PATTERN = r"^-?[0-9]+$"
_UINT64_PATTERN = r"^[0-9]+$"

_SCALARS: dict[int, Schema] = {
    _FD.TYPE_STRING: {"type": "string"},
    _FD.TYPE_BOOL: {"type": "boolean"},
    _FD.TYPE_INT32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    _FD.TYPE_SINT32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    _FD.TYPE_SFIXED32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    _FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    # proto3 JSON prints 64-bit integers as strings (JavaScript loses precision above 2^53).
    _FD.TYPE_INT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _FD.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _FD.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _FD.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
    _FD.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
    _FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    _FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _FD.TYPE_BYTES: {"type": "string", "format": "byte"},
}

_WRAPPERS = {
    "google.protobuf.StringValue": _FD.TYPE_STRING,
    "google.protobuf.BytesValue": _FD.TYPE_BYTES,
    "google.protobuf.BoolValue": _FD.TYPE_BOOL,
    "google.protobuf.Int32Value": _FD.TYPE_INT32,
    "google.protobuf.UInt32Value": _FD.TYPE_UINT32,
    "google.protobuf.Int64Value": _FD.TYPE_INT64,
    "google.protobuf.UInt64Value": _FD.TYPE_UINT64,
    "google.protobuf.FloatValue": _FD.TYPE_FLOAT,
    "google.protobuf.DoubleValue": _FD.TYPE_DOUBLE,
}

# Well-known types have their own JSON form (proto3 JSON mapping), not their fields.
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 time in UTC, e.g. 2026-11-29T07:00:00Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.Struct": {
        "type": "object",
        "additionalProperties": True,
        "description": "Any JSON object.",
    },
    # No `type`: any JSON value, null included.
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}, "description": "Any JSON array."},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths, e.g. user_id,method.",
    },
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
        "description": "A message of the type named by `@type`, with that message's fields.",
    },
    "google.protobuf.NullValue": {"description": "JSON null."},
}


def ref(full_name: str) -> Schema:
    """A reference to the component schema of a message."""
    return {"$ref": f"#/components/schemas/{full_name}"}


def is_map(field: descriptor.FieldDescriptor) -> bool:
    """True for a `map<k, v>` field."""
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def is_well_known(message_type: descriptor.Descriptor) -> bool:
    """True when the message has a JSON form of its own (Timestamp, Struct, wrappers…)."""
    return message_type.full_name in _WELL_KNOWN or message_type.full_name in _WRAPPERS


class SchemaBuilder:
    """Collects the component schemas every referenced message and enum needs."""

    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.components: dict[str, Schema] = {}

    def message(
        self, message_type: descriptor.Descriptor, *, exclude: frozenset[str] = frozenset()
    ) -> Schema:
        """A reference to the message's component; inline without the `exclude`d fields."""
        if message_type.full_name in _WELL_KNOWN or message_type.full_name in _WRAPPERS:
            return self._well_known(message_type)
        if exclude:
            return self._object(message_type, exclude)
        if message_type.full_name not in self.components:
            self.components[message_type.full_name] = {}  # reserved first: recursion stops at the ref
            self.components[message_type.full_name] = self._object(message_type, frozenset())
        return ref(message_type.full_name)

    def field(self, field: descriptor.FieldDescriptor) -> Schema:
        """The schema of a field's JSON value, with its comment as description."""
        if is_map(field):
            assert field.message_type is not None  # is_map checked it
            value_field = field.message_type.fields_by_name["value"]
            schema: Schema = {"type": "object", "additionalProperties": self._single(value_field)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self._single(field)}
        else:
            schema = self._single(field)
        return self._describe(schema, self.comments.get(field.full_name))

    def scalar(self, field: descriptor.FieldDescriptor) -> Schema:
        """The schema of one value of a non-message field (query and path parameters)."""
        return self._single(field)

    def _single(self, field: descriptor.FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def enum(self, enum_type: descriptor.EnumDescriptor) -> Schema:
        """A reference to the enum's component: a string enum of the value names."""
        if enum_type.full_name == "google.protobuf.NullValue":
            return dict(_WELL_KNOWN[enum_type.full_name])
        if enum_type.full_name not in self.components:
            lines = []
            for value in enum_type.values:
                text = self.comments.get(f"{enum_type.full_name}.{value.name}")
                lines.append(f"- `{value.name}`" + (f": {text}" if text else ""))
            # Per-value comments as a Markdown list: OpenAPI 3.0 has no place of their own for them.
            values = "\n".join(lines)
            own = self.comments.get(enum_type.full_name)
            self.components[enum_type.full_name] = {
                "type": "string",
                "enum": [value.name for value in enum_type.values],
                "description": f"{own}\n\n{values}" if own else values,
            }
        return ref(enum_type.full_name)

    def _object(self, message_type: descriptor.Descriptor, exclude: frozenset[str]) -> Schema:
        properties = {f.name: self.field(f) for f in message_type.fields if f.name not in exclude}
        schema: Schema = {"type": "object", "properties": properties}
        oneofs = [o for o in message_type.oneofs if not _synthetic(o)]
        notes = [f"At most one of {', '.join(f'`{f.name}`' for f in o.fields)}." for o in oneofs]
        text = "\n\n".join(t for t in (self.comments.get(message_type.full_name), *notes) if t)
        return self._describe(schema, text)

    def _well_known(self, message_type: descriptor.Descriptor) -> Schema:
        wrapped = _WRAPPERS.get(message_type.full_name)
        if wrapped is not None:
            return {**_SCALARS[wrapped], "nullable": True}
        return dict(_WELL_KNOWN[message_type.full_name])

    @staticmethod
    def _describe(schema: Schema, text: str) -> Schema:
        if not text:
            return schema
        if "$ref" in schema:
            # OpenAPI 3.0 ignores siblings of $ref: wrap it so the field's own comment survives.
            return {"allOf": [schema], "description": text}
        own = schema.get("description")  # e.g. the form of a Timestamp, kept after the field's comment
        return {**schema, "description": f"{text}\n\n{own}" if own else text}


def _synthetic(oneof: descriptor.OneofDescriptor) -> bool:
    # proto3 `optional` fields live in a synthetic oneof of one field named `_<field>`.
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"
