"""REST ⇄ protobuf transcoding (pure: no I/O).

The JSON mapping lives here and only here (`message_to_dict` and `_parse_into`; edge.fastjson
runs the same mapping compiled per message type on the hot path, JSON text is orjson's):

- proto field names on output (`user_id`, not `userId`); input accepts both, as
  proto3 JSON does;
- unknown fields on input are ignored;
- enums as their names (input also accepts numbers);
- fields without presence are always printed (`"attempts": 0`, `"from_cache": false`,
  `"params": {}`), as grpc-gateway v2's default marshaler does, so clients see a
  stable shape; unset message fields (`result`, `error`, timestamps) are omitted;
- int64/uint64 as JSON strings, Timestamp/Duration as RFC 3339 / "1.5s" strings,
  per the proto3 JSON mapping;
- google.rpc error details print only the fields that are set (`detail_to_dict`).

Request fields come from the path variables, the body (`body: "*"` → the whole
JSON object, `body: "<field>"` → that field, `""` → no body) and the query string
(only when the body is not `*`). Path variables are applied last, so they win.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar, cast

import orjson
from google.protobuf import any_pb2, descriptor, json_format, message

from edge import fastjson

_FD = descriptor.FieldDescriptor
_STRING_TYPES = frozenset({_FD.TYPE_STRING})
# strconv.ParseBool, which grpc-gateway uses for query and path booleans.
_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


M = TypeVar("M", bound=message.Message)


# orjson's refusal of JSON nested deeper than it parses (1024 levels).
_DEPTH_EXCEEDED = "depth limit exceeded"


class TranscodeError(ValueError):
    """The REST request cannot become the gRPC request (→ 400 INVALID_ARGUMENT)."""


def message_to_dict(msg: message.Message) -> dict[str, Any]:
    """A message as a JSON-ready dict, with the edge's one JSON mapping.

    json_format's MessageToDict with preserving_proto_field_name and
    always_print_fields_with_no_presence, compiled per message type (edge.fastjson).
    """
    return fastjson.to_dict(msg)


def detail_to_dict(detail: any_pb2.Any) -> dict[str, Any]:
    """A google.rpc error detail (an Any) as JSON with `@type`; sparse, since details are mostly empty."""
    return json_format.MessageToDict(detail, preserving_proto_field_name=True)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return orjson.dumps(value)


def response_json(msg: message.Message, response_body: str = "") -> bytes:
    """The HTTP body of a unary answer: the message, or its `response_body` field."""
    if response_body:
        return dumps(message_to_dict(msg).get(response_body))
    return dumps(message_to_dict(msg))


def _repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


class RequestBuilder(Generic[M]):
    """Builds one method's request message; everything schema-related is worked out once."""

    def __init__(self, request_cls: type[M], body: str, path_fields: Iterable[str]) -> None:
        self.request_cls = request_cls
        self.body = body
        self.path_fields = tuple(path_fields)
        # cast: the stubs type DESCRIPTOR as a union with upb's own classes.
        self._descriptor = cast(descriptor.Descriptor, request_cls.DESCRIPTOR)
        fields = self._descriptor.fields_by_name
        bound_roots = {p.split(".", 1)[0] for p in self.path_fields}
        # Top-level string path variables are set with setattr (the common case: `{job_id}`).
        self._fast_path = {p for p in self.path_fields if "." not in p and fields[p].type in _STRING_TYPES}
        self.body_required = body == "*" and any(name not in bound_roots for name in fields)
        # grpc-gateway's filter: path-bound fields and the body field never come from the query.
        self._query_excluded = frozenset(bound_roots | ({body} if body else set()))
        self._query_fields: dict[str, tuple[descriptor.FieldDescriptor, ...]] = {}
        self._body_parser = fastjson.BodyParser(request_cls) if body == "*" else None

    @property
    def accepts_body(self) -> bool:
        """True when the HTTP rule names a body."""
        return bool(self.body)

    def build(self, path_vars: Mapping[str, str], body: bytes | None, query: Iterable[tuple[str, str]]) -> M:
        """The request from path variables, raw body bytes (None or b"" = no body) and query pairs."""
        msg = self.request_cls()
        if self.body:
            self._apply_body(msg, body)
        elif body:
            raise TranscodeError("this method takes no request body")
        if self.body != "*":
            tree = self._query_tree(query)
            if tree:
                _parse_into(tree, msg)
        self._apply_path(msg, path_vars)
        return msg

    def _apply_body(self, msg: message.Message, body: bytes | None) -> None:
        if not body:
            if self.body_required:
                raise TranscodeError("request body is required (a JSON object)")
            return
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith(_DEPTH_EXCEEDED):  # hostile nesting: a clear 400, not a crash
                raise TranscodeError("request body is nested too deeply") from None
            raise TranscodeError(f"request body is not valid JSON: {exc}") from None
        if self._body_parser is not None:
            if not isinstance(value, dict):
                raise TranscodeError("request body must be a JSON object")
            # Fields whose JSON value is already of their type are set directly; json_format
            # parses (or refuses) the rest, and all of it when a field is named twice.
            rest = self._body_parser.parse(value, msg)
            if rest is None:
                msg.Clear()
                _parse_into(value, msg)
            elif rest:
                _parse_into(rest, msg)
        else:
            _parse_into({self.body: value}, msg)

    def _apply_path(self, msg: message.Message, path_vars: Mapping[str, str]) -> None:
        tree: dict[str, Any] = {}
        for name, value in path_vars.items():
            if name in self._fast_path:
                setattr(msg, name, value)
                continue
            chain = _resolve(self._descriptor, name)
            assert chain is not None  # routes.build checked every path variable against the schema
            _insert(tree, chain, _scalar(chain[-1], value), name)
        if tree:
            _parse_into(tree, msg)

    def _query_tree(self, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, value in query:
            chain = self._query_fields.get(key)
            if chain is None:
                if key.split(".", 1)[0] in self._query_excluded:
                    continue
                chain = _resolve(self._descriptor, key)
                if chain is None:
                    continue  # unknown query parameters are ignored, as grpc-gateway does
                self._query_fields[key] = chain  # bounded by the schema: only known keys are kept
            leaf = chain[-1]
            if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
                raise TranscodeError(f"{key}: map fields cannot be set from the query string")
            _insert(tree, chain, _scalar(leaf, value), key)
        return tree


def _resolve(msg_type: descriptor.Descriptor, path: str) -> tuple[descriptor.FieldDescriptor, ...] | None:
    chain: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = msg_type
    for name in path.split("."):
        if current is None:
            return None
        field = current.fields_by_name.get(name)
        if field is None:
            return None
        if chain and _repeated(chain[-1]):
            return None  # no path through a repeated message
        chain.append(field)
        current = field.message_type
    return tuple(chain)


def _scalar(field: descriptor.FieldDescriptor, raw: str) -> Any:
    if field.type == _FD.TYPE_BOOL:
        if raw not in _BOOLS:
            raise TranscodeError(f"{field.name}: expected a boolean, got {raw!r}")
        return _BOOLS[raw]
    return raw  # json_format converts strings to numbers, enums (names or numbers), bytes (base64)


def _insert(tree: dict[str, Any], chain: tuple[_FD, ...], value: Any, key: str) -> None:
    node = tree
    for field in chain[:-1]:
        child = node.setdefault(field.name, {})
        if not isinstance(child, dict):
            raise TranscodeError(f"{key}: conflicts with another parameter")
        node = child
    leaf = chain[-1]
    if _repeated(leaf):
        existing = node.setdefault(leaf.name, [])
        if not isinstance(existing, list):
            raise TranscodeError(f"{key}: conflicts with another parameter")
        existing.append(value)
    elif leaf.name in node:
        raise TranscodeError(f"{key}: given more than once but is not a repeated field")
    else:
        node[leaf.name] = value


# JSON nesting the edge parses. Well under what the gateway's protobuf decoder takes (a Struct
# nested ~45 deep already fails there), so a deep `meta` is the edge's 400, never the gateway's 500.
MAX_PARSE_DEPTH = 64


def _known_only(value: Any, msg_type: descriptor.Descriptor) -> Any:
    """`value` without the keys `msg_type` does not know, recursively (unknown fields are ignored).

    Parsing the rest strictly keeps other checks: with ignore_unknown_fields, protobuf also
    drops an unknown enum name silently (`"priority": "URGENT"` became the default priority).
    It takes `true` for an enum too (as 1): refused here.
    """
    if not isinstance(value, dict) or msg_type.full_name.startswith("google.protobuf."):
        return value
    known: dict[str, Any] = {}
    for key, item in value.items():
        field = msg_type.fields_by_name.get(key) or msg_type.fields_by_camelcase_name.get(key)
        if field is None:
            continue
        if field.enum_type is not None and isinstance(item, bool):
            raise TranscodeError(f"{key}: expected an enum name, got {json.dumps(item)}")
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            values = sub.fields_by_name["value"].message_type
            if values is not None and isinstance(item, dict):
                item = {k: _known_only(v, values) for k, v in item.items()}
        elif sub is not None and _repeated(field) and isinstance(item, list):
            item = [_known_only(v, sub) for v in item]
        elif sub is not None:
            item = _known_only(item, sub)
        known[key] = item
    return known


def _parse_into(value: dict[str, Any], msg: message.Message) -> None:
    try:
        known = _known_only(value, cast(descriptor.Descriptor, msg.DESCRIPTOR))
        json_format.ParseDict(known, msg, max_recursion_depth=MAX_PARSE_DEPTH)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise TranscodeError(str(exc)) from None
    except RecursionError:
        raise TranscodeError("request nested too deeply") from None
