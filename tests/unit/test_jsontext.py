"""common.jsontext writes what the standard encoder wrote, and takes what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common import jsontext


def _standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "value",
    [
        {"photo_id": "1", "tags": "café, 東京", "empty": ""},
        {
            "stat": "ok",
            "photos": {"page": 1, "perpage": 3, "photo": [{"id": "5", "farm": 66, "ispublic": 1}]},
        },
        {"lat": 37.7749, "neg": -0.5, "big": 2**63 - 1, "none": None, "t": True, "f": False},
        ["nested", ["list", {"a": {"b": []}}]],
        {"control": 'tab\there\nnewline \u0001 quote" backslash\\'},
    ],
)
def test_the_same_text_as_the_standard_encoder(value: Any) -> None:
    assert jsontext.dumps(value) == _standard(value)
    assert json.loads(jsontext.dumps(value)) == value


def test_what_orjson_refuses_goes_through_the_standard_encoder() -> None:
    huge = {"id": 2**70}  # orjson refuses integers beyond 64 bits
    assert jsontext.dumps(huge) == '{"id":1180591620717411303424}'
    surrogate = {"s": "\ud800"}  # not valid UTF-8: orjson refuses it, the standard encoder writes it
    assert jsontext.dumps(surrogate) == _standard(surrogate)
