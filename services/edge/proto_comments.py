"""Proto comments by element name, read from a descriptor set built with source info (pure but for one read).

Python's run-time descriptors drop `source_code_info`, so `scripts/gen_protos.py`
also writes `gen/flickrhub/v1/descriptor_set.binpb` (protoc `--descriptor_set_out
--include_source_info --include_imports`). This module maps its comment locations
to full names: `flickrhub.v1.Job` (message), `flickrhub.v1.Job.job_id` (field),
`flickrhub.v1.JobState.JOB_STATE_QUEUED` (enum value, scoped by its enum here),
`flickrhub.v1.JobService.SubmitJob` (method).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

log = logging.getLogger(__name__)

DESCRIPTOR_SET_NAME = "descriptor_set.binpb"

# Field numbers inside descriptor.proto that source_code_info paths walk through.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


class Comments:
    """Comment text by full element name; an unknown name has no comment."""

    def __init__(self, by_name: Mapping[str, str] | None = None) -> None:
        self._by_name = dict(by_name or {})

    def get(self, full_name: str) -> str:
        """The comment of `full_name`, or ""."""
        return self._by_name.get(full_name, "")

    def __len__(self) -> int:
        return len(self._by_name)

    @classmethod
    def from_file_set(cls, file_set: descriptor_pb2.FileDescriptorSet) -> Comments:
        """Every commented element of every file in a descriptor set."""
        found: dict[str, str] = {}
        for proto in file_set.file:
            found.update(_file_comments(proto))
        return cls(found)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Comments:
        """Comments from the descriptor-set files that exist among `paths` (none: no descriptions)."""
        file_set = descriptor_pb2.FileDescriptorSet()
        for path in paths:
            if not path.is_file():
                log.warning("no descriptor set at %s: the OpenAPI document has no descriptions from it", path)
                continue
            file_set.MergeFromString(path.read_bytes())
        return cls.from_file_set(file_set)


def _text(location: descriptor_pb2.SourceCodeInfo.Location) -> str:
    # A leading comment describes the element; a trailing one is the fallback (`FOO = 1; // why`).
    raw = location.leading_comments or location.trailing_comments
    lines = [line.removeprefix(" ").rstrip() for line in raw.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _file_comments(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    names = _names_by_path(proto)
    out: dict[str, str] = {}
    for location in proto.source_code_info.location:
        name = names.get(tuple(location.path))
        text = _text(location) if name is not None else ""
        if name is not None and text:
            out[name] = text
    return out


def _names_by_path(proto: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    prefix = f"{proto.package}." if proto.package else ""
    names: dict[tuple[int, ...], str] = {}
    for i, message in enumerate(proto.message_type):
        _message_names(names, (_FILE_MESSAGE, i), prefix + message.name, message)
    for i, enum in enumerate(proto.enum_type):
        _enum_names(names, (_FILE_ENUM, i), prefix + enum.name, enum)
    for i, service in enumerate(proto.service):
        full = prefix + service.name
        names[(_FILE_SERVICE, i)] = full
        for j, method in enumerate(service.method):
            names[(_FILE_SERVICE, i, _SERVICE_METHOD, j)] = f"{full}.{method.name}"
    return names


def _message_names(
    names: dict[tuple[int, ...], str],
    path: Sequence[int],
    full: str,
    message: descriptor_pb2.DescriptorProto,
) -> None:
    names[tuple(path)] = full
    for i, field in enumerate(message.field):
        names[(*path, _MESSAGE_FIELD, i)] = f"{full}.{field.name}"
    for i, nested in enumerate(message.nested_type):
        _message_names(names, (*path, _MESSAGE_NESTED, i), f"{full}.{nested.name}", nested)
    for i, enum in enumerate(message.enum_type):
        _enum_names(names, (*path, _MESSAGE_ENUM, i), f"{full}.{enum.name}", enum)


def _enum_names(
    names: dict[tuple[int, ...], str],
    path: Sequence[int],
    full: str,
    enum: descriptor_pb2.EnumDescriptorProto,
) -> None:
    names[tuple(path)] = full
    for i, value in enumerate(enum.value):
        names[(*path, _ENUM_VALUE, i)] = f"{full}.{value.name}"
