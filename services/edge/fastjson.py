"""The edge's proto3 JSON mapping, compiled once per message type instead of walked per request.

`transcode` owns the mapping; this module is how its hot path runs it. What comes out is exactly
what `json_format` gives with the edge's options (proto field names, fields without presence
always printed, enums as names, int64 as strings); `tests/unit/test_edge_fastjson.py` holds the
two side by side.

- `printer(cls)(msg)`: a message as a JSON-ready dict. Set fields first in field-number order,
  then the unset fields without presence with their defaults, as json_format orders them.
  Well-known types (`google.protobuf.*`: Struct, Timestamp, Duration, Any, wrappers…) are
  printed by json_format itself, field by field.
- `BodyParser(cls).parse(obj, msg)`: sets the fields of a decoded JSON object whose values
  already have their exact JSON type (a string for a string field, an enum's name, an int in
  range, a map of strings…) and returns the rest (anything needing a conversion, a check or a
  refusal) for json_format, which then sees just those keys and answers with its own messages.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import descriptor, json_format, message
from google.protobuf.internal import type_checkers

_FD = descriptor.FieldDescriptor
_INT64 = frozenset({_FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT64})
_INT32 = frozenset({_FD.CPPTYPE_INT32, _FD.CPPTYPE_UINT32})
_WKT_PREFIX = "google.protobuf."

Convert = Callable[[Any], Any]
Setter = Callable[[message.Message, Any], bool]


def _wkt(msg: message.Message) -> Any:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _identity(value: Any) -> Any:
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _double(value: float) -> Any:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return value


def _float(value: float) -> Any:
    if math.isinf(value) or math.isnan(value):
        return _double(value)
    return type_checkers.ToShortestFloat(value)


class _Fallback(Exception):
    """This message cannot be printed here (an extension, a closed enum's unknown number)."""


def _enum(field: descriptor.FieldDescriptor) -> Convert:
    enum_type = cast(descriptor.EnumDescriptor, field.enum_type)
    names = {number: value.name for number, value in enum_type.values_by_number.items()}
    closed = enum_type.is_closed

    def convert(value: int) -> Any:
        name = names.get(value)
        if name is not None:
            return name
        if closed:
            raise _Fallback  # json_format refuses it, with its own message
        return value

    return convert


def _scalar(field: descriptor.FieldDescriptor) -> Convert:
    cpp = field.cpp_type
    if cpp == _FD.CPPTYPE_MESSAGE:
        sub = cast(descriptor.Descriptor, field.message_type)
        if sub.full_name.startswith(_WKT_PREFIX):
            return _wkt
        return _Printer.lazy(sub)
    if cpp == _FD.CPPTYPE_ENUM:
        return _enum(field)
    if cpp == _FD.CPPTYPE_STRING:
        return _bytes if field.type == _FD.TYPE_BYTES else _identity
    if cpp in _INT64:
        return str
    if cpp == _FD.CPPTYPE_FLOAT:
        return _float
    if cpp == _FD.CPPTYPE_DOUBLE:
        return _double
    return _identity  # bool, 32-bit integers


def _map_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field(field: descriptor.FieldDescriptor) -> Convert:
    sub = field.message_type
    if sub is not None and sub.GetOptions().map_entry:
        value_convert = _scalar(sub.fields_by_name["value"])
        if value_convert is _identity:
            return lambda m: {_map_key(k): v for k, v in m.items()}
        return lambda m: {_map_key(k): value_convert(v) for k, v in m.items()}
    convert = _scalar(field)
    if field.is_repeated:
        if convert is _identity:
            return list
        return lambda values: [convert(v) for v in values]
    return convert


class _Printer:
    """One message type's printer; built on first use, shared by every type that nests it."""

    # Keyed by the descriptor itself: two pools may each hold a type of the same full name.
    _cache: dict[descriptor.Descriptor, _Printer] = {}

    def __init__(self, desc: descriptor.Descriptor) -> None:
        self.desc = desc
        self._fields: dict[int, tuple[str, Convert]] | None = None
        self._defaults: list[tuple[str, Any]] = []

    @classmethod
    def get(cls, desc: descriptor.Descriptor) -> _Printer:
        printer = cls._cache.get(desc)
        if printer is None:
            printer = cls._cache[desc] = _Printer(desc)
        return printer

    @classmethod
    def lazy(cls, desc: descriptor.Descriptor) -> Convert:
        printer = cls.get(desc)
        return printer.to_dict

    def _compile(self) -> dict[int, tuple[str, Convert]]:
        fields = {f.number: (f.name, _field(f)) for f in self.desc.fields}
        for f in self.desc.fields:
            if not f.has_presence:
                # json_format's default for an unset field without presence ({} and [] made fresh).
                is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
                default: Any = dict if is_map else list if f.is_repeated else _field(f)(f.default_value)
                self._defaults.append((f.name, default))
        self._fields = fields
        return fields

    def to_dict(self, msg: message.Message) -> dict[str, Any]:
        fields = self._fields if self._fields is not None else self._compile()
        out: dict[str, Any] = {}
        try:
            for field, value in msg.ListFields():
                entry = fields.get(field.number)
                if entry is None or field.is_extension:
                    raise _Fallback
                name, convert = entry
                out[name] = convert(value)
        except _Fallback:
            return cast(dict[str, Any], _wkt(msg))
        for name, default in self._defaults:
            if name not in out:
                out[name] = default() if default is dict or default is list else default
        return out


def printer(cls: type[message.Message]) -> Callable[[message.Message], dict[str, Any]]:
    """The compiled printer of a message class."""
    desc = cast(descriptor.Descriptor, cls.DESCRIPTOR)
    if desc.full_name.startswith(_WKT_PREFIX):
        return cast(Callable[[message.Message], dict[str, Any]], _wkt)
    return _Printer.get(desc).to_dict


def to_dict(msg: message.Message) -> dict[str, Any]:
    """A message as a JSON-ready dict (the compiled printer of its type)."""
    return printer(type(msg))(msg)


# -- parsing ------------------------------------------------------------------------------------


def _set_str(name: str) -> Setter:
    def setter(msg: message.Message, value: Any) -> bool:
        if type(value) is not str:
            return False
        try:
            setattr(msg, name, value)
        except ValueError:  # not encodable as UTF-8 (a lone surrogate): json_format says so
            return False
        return True

    return setter


def _set_bool(name: str) -> Setter:
    def setter(msg: message.Message, value: Any) -> bool:
        if type(value) is not bool:
            return False
        setattr(msg, name, value)
        return True

    return setter


def _set_int(name: str) -> Setter:
    def setter(msg: message.Message, value: Any) -> bool:
        if type(value) is not int:
            return False
        try:
            setattr(msg, name, value)
        except ValueError:  # out of range: json_format says so
            return False
        return True

    return setter


def _set_enum(field: descriptor.FieldDescriptor) -> Setter:
    enum_type = cast(descriptor.EnumDescriptor, field.enum_type)
    numbers = {value.name: value.number for value in enum_type.values}
    name = field.name

    def setter(msg: message.Message, value: Any) -> bool:
        number = numbers.get(value) if type(value) is str else None
        if number is None:
            return False
        setattr(msg, name, number)
        return True

    return setter


def _set_string_map(name: str) -> Setter:
    def setter(msg: message.Message, value: Any) -> bool:
        if type(value) is not dict or not all(type(v) is str for v in value.values()):
            return False
        target = getattr(msg, name)
        try:
            for key, item in value.items():  # (upb maps' update() is the slow generic one)
                target[key] = item
        except ValueError:  # json_format clears the map before it parses it again and refuses
            return False
        return True

    return setter


def _set_string_list(name: str) -> Setter:
    def setter(msg: message.Message, value: Any) -> bool:
        if type(value) is not list or not all(type(v) is str for v in value):
            return False
        try:
            getattr(msg, name).extend(value)
        except ValueError:  # json_format clears the list before it parses it again and refuses
            return False
        return True

    return setter


def _setter(field: descriptor.FieldDescriptor) -> Setter | None:
    """A direct setter for the field kinds the hot path sees; None leaves the field to json_format."""
    if field.containing_oneof is not None or field.is_extension:
        return None
    sub = field.message_type
    if sub is not None:
        if not sub.GetOptions().map_entry:
            return None
        key, value = sub.fields_by_name["key"], sub.fields_by_name["value"]
        if key.type == value.type == _FD.TYPE_STRING:
            return _set_string_map(field.name)
        return None
    if field.is_repeated:
        return _set_string_list(field.name) if field.type == _FD.TYPE_STRING else None
    if field.type == _FD.TYPE_STRING:
        return _set_str(field.name)
    if field.type == _FD.TYPE_BOOL:
        return _set_bool(field.name)
    if field.type == _FD.TYPE_ENUM:
        return _set_enum(field)
    if field.cpp_type in _INT32 or field.cpp_type in _INT64:
        return _set_int(field.name)
    return None


class BodyParser:
    """Sets the simple fields of a JSON object on a message; the rest goes back to json_format."""

    def __init__(self, cls: type[message.Message]) -> None:
        desc = cast(descriptor.Descriptor, cls.DESCRIPTOR)
        by_json = {f.json_name: f for f in desc.fields}
        self._known: dict[str, tuple[int, Setter | None]] = {}
        for key in {*desc.fields_by_name, *desc.fields_by_camelcase_name}:
            # The field json_format would set for this key, kept only where the edge's unknown-field
            # filter (by name or camel-case name) resolves the key to the same field.
            field = desc.fields_by_name.get(key) or desc.fields_by_camelcase_name.get(key)
            target = by_json.get(key) or desc.fields_by_name.get(key)
            if field is None:
                continue
            setter = _setter(field) if target is field else None
            self._known[key] = (field.number, setter)

    def parse(self, obj: dict[str, Any], msg: message.Message) -> dict[str, Any] | None:
        """Set what can be set directly; return the known keys left over (None: leave all of it).

        None comes back when two keys name one field (`user_id` and `userId`): json_format then
        parses the whole object, so the order of the keys decides as it always has.
        """
        rest: dict[str, Any] = {}
        seen: set[int] = set()
        known = self._known
        for key, value in obj.items():
            entry = known.get(key)
            if entry is None:
                continue  # unknown fields are ignored
            number, setter = entry
            if number in seen:
                return None
            seen.add(number)
            if setter is None or not setter(msg, value):
                rest[key] = value
        return rest
