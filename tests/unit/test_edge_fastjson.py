"""edge.fastjson against json_format: the same JSON out, the same messages and refusals in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import fastjson, routes, transcode
from edge.app import PROTO_MODULES
from flickrhub.v1 import jobs_pb2, legacy_pb2

FDP = descriptor_pb2.FileDescriptorProto
FD = descriptor_pb2.FieldDescriptorProto


def _reference(msg: message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _same(msg: message.Message) -> None:
    ours, theirs = fastjson.to_dict(msg), _reference(msg)
    assert ours == theirs
    # Byte for byte: key order too (set fields by number, then the defaults).
    assert transcode.dumps(ours) == transcode.dumps(theirs)


def _all_scalars_proto() -> type[message.Message]:
    """A proto3 message with every scalar kind, maps, repeated, optional, oneof and nesting."""
    fdp = FDP(name="edge_fastjson_test.proto", package="fjtest", syntax="proto3")
    fdp.dependency.extend(["google/protobuf/struct.proto", "google/protobuf/timestamp.proto"])
    enum = fdp.enum_type.add(name="Color")
    for i, name in enumerate(("COLOR_UNSPECIFIED", "RED", "GREEN")):
        enum.value.add(name=name, number=i)
    inner = fdp.message_type.add(name="Inner")
    inner.field.add(name="label", number=1, type=FD.TYPE_STRING)
    inner.field.add(name="n", number=2, type=FD.TYPE_INT64)
    all_ = fdp.message_type.add(name="All")
    kinds = [
        ("d", FD.TYPE_DOUBLE),
        ("f", FD.TYPE_FLOAT),
        ("i32", FD.TYPE_INT32),
        ("i64", FD.TYPE_INT64),
        ("u32", FD.TYPE_UINT32),
        ("u64", FD.TYPE_UINT64),
        ("s32", FD.TYPE_SINT32),
        ("s64", FD.TYPE_SINT64),
        ("fx32", FD.TYPE_FIXED32),
        ("fx64", FD.TYPE_FIXED64),
        ("sf64", FD.TYPE_SFIXED64),
        ("b", FD.TYPE_BOOL),
        ("s", FD.TYPE_STRING),
        ("raw", FD.TYPE_BYTES),
    ]
    number = 1
    for name, kind in kinds:
        all_.field.add(name=name, number=number, type=kind)
        all_.field.add(name=f"rep_{name}", number=number + 1, type=kind, label=FD.LABEL_REPEATED)
        number += 2
    all_.field.add(name="color", number=number, type=FD.TYPE_ENUM, type_name=".fjtest.Color")
    all_.field.add(
        name="colors",
        number=number + 1,
        type=FD.TYPE_ENUM,
        type_name=".fjtest.Color",
        label=FD.LABEL_REPEATED,
    )
    all_.field.add(name="inner", number=number + 2, type=FD.TYPE_MESSAGE, type_name=".fjtest.Inner")
    all_.field.add(
        name="inners",
        number=number + 3,
        type=FD.TYPE_MESSAGE,
        type_name=".fjtest.Inner",
        label=FD.LABEL_REPEATED,
    )
    all_.field.add(name="meta", number=number + 4, type=FD.TYPE_MESSAGE, type_name=".google.protobuf.Struct")
    all_.field.add(name="at", number=number + 5, type=FD.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    all_.field.add(name="opt", number=number + 6, type=FD.TYPE_STRING, proto3_optional=True, oneof_index=1)
    all_.field.add(name="one_a", number=number + 7, type=FD.TYPE_STRING, oneof_index=0)
    all_.field.add(name="one_b", number=number + 8, type=FD.TYPE_INT32, oneof_index=0)
    all_.field.add(name="self", number=number + 9, type=FD.TYPE_MESSAGE, type_name=".fjtest.All")
    all_.oneof_decl.add(name="choice")
    all_.oneof_decl.add(name="_opt")
    number += 10
    for key_kind, value_kind, value_type in (
        (FD.TYPE_STRING, FD.TYPE_STRING, ""),
        (FD.TYPE_INT32, FD.TYPE_DOUBLE, ""),
        (FD.TYPE_BOOL, FD.TYPE_BYTES, ""),
        (FD.TYPE_INT64, FD.TYPE_ENUM, ".fjtest.Color"),
        (FD.TYPE_STRING, FD.TYPE_MESSAGE, ".fjtest.Inner"),
        (FD.TYPE_STRING, FD.TYPE_MESSAGE, ".google.protobuf.Value"),
    ):
        entry = all_.nested_type.add(name=f"M{number}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key_kind)
        entry.field.add(name="value", number=2, type=value_kind)
        if value_type:
            entry.field[1].type_name = value_type
        all_.field.add(
            name=f"map{number}",
            number=number,
            type=FD.TYPE_MESSAGE,
            type_name=f".fjtest.All.M{number}Entry",
            label=FD.LABEL_REPEATED,
        )
        number += 1
    pool = descriptor_pool.Default()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fjtest.All"))


ALL = _all_scalars_proto()


def _populated() -> Iterator[message.Message]:
    msg: Any = ALL()
    yield msg
    msg = ALL(d=1.5, f=0.1, i32=-3, i64=2**62, u32=7, u64=2**64 - 1, s32=-1, s64=-(2**40), fx32=1, fx64=2)
    msg.sf64, msg.b, msg.s, msg.raw, msg.color = -5, True, "ü😀\u2028", b"\x00\xff", 2
    msg.rep_d.extend([float("inf"), float("-inf"), float("nan"), 0.25])
    msg.rep_f.extend([float("nan"), 1e-7, 3.4e38])
    msg.rep_i64.extend([0, -1])
    msg.rep_u64.append(3)
    msg.rep_b.extend([False, True])
    msg.rep_s.extend(["a", ""])
    msg.rep_raw.append(b"abc")
    msg.colors.extend([0, 1, 99])  # 99: an open enum's unknown number prints as a number
    msg.inner.label = "x"
    msg.inners.add(n=5)
    msg.inners.add()
    msg.meta.update({"a": 1, "b": [True, None, "s"], "c": {"d": 2.5}})
    msg.at.FromJsonString("2026-11-29T07:00:00.5Z")
    msg.opt = ""
    msg.one_b = 0
    msg.self.s = "nested"
    msg.self.self.i64 = 1
    fields: Any = ALL.DESCRIPTOR.fields
    for field in fields:
        if field.name.startswith("map"):
            target = getattr(msg, field.name)
            value_field = field.message_type.fields_by_name["value"]
            key_kind = field.message_type.fields_by_name["key"].type
            samples: dict[int, list[Any]] = {FD.TYPE_STRING: ["k", "ü"], FD.TYPE_BOOL: [True, False]}
            keys = samples.get(key_kind, [1, -2])
            for key in keys:
                if value_field.message_type is None:
                    sample: Any = {
                        FD.TYPE_STRING: "v",
                        FD.TYPE_DOUBLE: float("nan"),
                        FD.TYPE_BYTES: b"\x01",
                        FD.TYPE_ENUM: 1,
                    }[value_field.type]
                    target[key] = sample
                elif value_field.message_type.full_name == "google.protobuf.Value":
                    target[key].string_value = "v"
                else:
                    target[key].label = "v"
    yield msg
    yield ALL(f=float("inf"), d=float("nan"), one_a="a", color=5)


@pytest.mark.parametrize("index", range(3))
def test_every_field_kind_prints_as_json_format_prints_it(index: int) -> None:
    _same(list(_populated())[index])


def _response_classes() -> list[Any]:
    found: dict[str, Any] = {}
    pending: list[Any] = [r.response_cls.DESCRIPTOR for r in routes.build(PROTO_MODULES)]
    seen: set[str] = set()
    while pending:
        desc = pending.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        found[desc.full_name] = message_factory.GetMessageClass(desc)
        pending.extend(f.message_type for f in desc.fields if f.message_type is not None)
    return [found[name] for name in sorted(found)]


@pytest.mark.parametrize("cls", _response_classes())
def test_every_response_type_prints_as_json_format_prints_it(cls: Any) -> None:
    _same(cls())
    _same(_filled(cls.DESCRIPTOR, 0))


def _filled(desc: Any, depth: int) -> message.Message:
    """A message of `desc` with every field set to something (two levels of nesting)."""
    msg: Any = message_factory.GetMessageClass(desc)()
    if desc.full_name.startswith("google.protobuf."):
        if desc.full_name == "google.protobuf.Timestamp":
            msg.FromJsonString("2026-01-02T03:04:05Z")
        elif desc.full_name == "google.protobuf.Struct":
            msg.update({"k": [1, "two", None]})
        return msg  # type: ignore[no-any-return]
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_") and oneof.fields[0] is not field:
            continue  # one member of a real oneof
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            value = sub.fields_by_name["value"]
            if value.message_type is None and value.type == FD.TYPE_STRING:
                getattr(msg, field.name)["k"] = "v"
            elif value.message_type is not None and depth < 2:
                getattr(msg, field.name)["k"].CopyFrom(_filled(value.message_type, depth + 1))
        elif sub is not None:
            if depth < 2:
                child = _filled(sub, depth + 1)
                if field.is_repeated:
                    getattr(msg, field.name).append(child)
                else:
                    getattr(msg, field.name).CopyFrom(child)
        elif field.is_repeated:
            getattr(msg, field.name).append(_sample(field))
        else:
            setattr(msg, field.name, _sample(field))
    return msg  # type: ignore[no-any-return]


def _sample(field: Any) -> Any:
    if field.type == FD.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FD.TYPE_STRING:
        return f"{field.name}-ü"
    if field.type == FD.TYPE_BYTES:
        return b"\x00b"
    if field.type == FD.TYPE_BOOL:
        return True
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return 0.5
    return 7


def test_proto2_messages_with_closed_enums_and_presence_print_as_json_format_prints_them() -> None:
    options = descriptor_pb2.FieldOptions(ctype=descriptor_pb2.FieldOptions.CORD, packed=False)
    options.ParseFromString(options.SerializeToString() + b"\x08\x07")  # 7: no CType, kept unknown
    _same(options)
    fdp = descriptor_pb2.FileDescriptorProto(name="x", dependency=["a"])
    fdp.message_type.add(name="M")
    _same(fdp)


def test_well_known_types_print_through_json_format() -> None:
    stamp = timestamp_pb2.Timestamp(seconds=5)
    assert fastjson.to_dict(stamp) == _reference(stamp)
    value = struct_pb2.Struct()
    value.update({"a": [1, None]})
    assert fastjson.to_dict(value) == _reference(value)


# -- parsing --------------------------------------------------------------------------------------


def _old_build(cls: type[message.Message], raw: bytes) -> message.Message | str:
    """json_format alone (the edge's path before fastjson), on the JSON the edge decodes."""
    msg = cls()
    try:
        transcode._parse_into(orjson.loads(raw), msg)
    except transcode.TranscodeError as exc:
        return f"error: {exc}"
    return msg


def _new_build(cls: type[message.Message], raw: bytes) -> message.Message | str:
    builder = transcode.RequestBuilder(cls, "*", ())
    try:
        return builder.build({}, raw, [])
    except transcode.TranscodeError as exc:
        return f"error: {exc}"


def _same_parse(cls: type[message.Message], body: dict[str, Any]) -> None:
    try:
        raw = json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return  # not JSON
    assert _new_build(cls, raw) == _old_build(cls, raw)


SUBMIT_BODIES: list[dict[str, Any]] = [
    {"user_id": "u", "method": "flickr.photos.search", "params": {"text": "sunset", "per_page": "3"}},
    {"userId": "u", "cacheBypass": True, "priority": "PRIORITY_HIGH", "target": "TARGET_UPLOAD"},
    {"user_id": "u", "userId": "v"},
    {"userId": 5, "user_id": "v"},
    {"user_id": "v", "userId": 5},
    {"priority": 1},
    {"priority": "1"},
    {"priority": "PRIORITY_URGENT"},
    {"target": True},
    {"params": {"a": 1}},
    {"params": {"a": None}},
    {"params": "a=1"},
    {"params": None, "user_id": None},
    {"meta": {"a": [1, {"b": None}]}, "user_id": "u"},
    {"meta": 7},
    {"cache_bypass": "true"},
    {"callback_url": {"u": 1}},
    {"idempotency_key": 12.5},
    {"unknown": 1, "alsoUnknown": {"x": [1]}},
]


@pytest.mark.parametrize("body", SUBMIT_BODIES)
def test_request_bodies_parse_as_json_format_parses_them(body: dict[str, Any]) -> None:
    _same_parse(jobs_pb2.SubmitJobRequest, body)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
_SUBMIT_KEYS = st.sampled_from(
    [
        *jobs_pb2.SubmitJobRequest.DESCRIPTOR.fields_by_name,
        *jobs_pb2.SubmitJobRequest.DESCRIPTOR.fields_by_camelcase_name,
        "nope",
    ]
)
_SUBMIT_VALUES = (
    _JSON_VALUES
    | st.sampled_from(["PRIORITY_LOW", "TARGET_REST", "JOB_STATE_QUEUED", "", "u"])
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_SUBMIT_KEYS, _SUBMIT_VALUES, max_size=6))
def test_any_submit_body_parses_as_json_format_parses_it(body: dict[str, Any]) -> None:
    _same_parse(jobs_pb2.SubmitJobRequest, body)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*ALL.DESCRIPTOR.fields_by_name, *ALL.DESCRIPTOR.fields_by_camelcase_name]),
        _JSON_VALUES | st.sampled_from(["RED", "GREEN", "x"]) | st.lists(st.text(max_size=3), max_size=3),
        max_size=6,
    )
)
def test_any_body_of_every_field_kind_parses_as_json_format_parses_it(body: dict[str, Any]) -> None:
    _same_parse(ALL, body)


def test_legacy_bodies_parse_as_json_format_parses_them() -> None:
    body = {"method": "flickr.photos.search", "params": {"text": "x"}, "user_id": "u", "extra": [1]}
    _same_parse(legacy_pb2.LegacySubmitRequest, body)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"params": {"k": "\\ud800"}}', "not valid JSON"),
        (b'{"user_id": NaN}', "not valid JSON"),
    ],
)
def test_hostile_json_is_refused_clearly(raw: bytes, fragment: str) -> None:
    with pytest.raises(transcode.TranscodeError, match=fragment):
        transcode.RequestBuilder(jobs_pb2.SubmitJobRequest, "*", ()).build({}, raw, [])
