"""Reading the workers' group lag from XINFO GROUPS replies (mover.mover._lag)."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from common import keys
from mover.mover import _lag, _undelivered


def _group(name: str | bytes, lag: object) -> list[object]:
    reply: list[object] = [b"name", name, b"consumers", 2, b"pending", 3, b"last-delivered-id", b"1-0"]
    if lag != "absent":
        reply += [b"entries-read", 5, b"lag", lag]
    return reply


def test_the_workers_groups_lag_is_what_waits() -> None:
    assert _lag([_group(b"other", 9), _group(keys.WORKER_GROUP.encode(), 4)]) == 4
    assert _lag([["name", keys.WORKER_GROUP, "lag", 0]]) == 0  # decoded replies too


def test_an_unknown_lag_or_a_missing_group_asks_for_a_count() -> None:
    assert _lag([_group(keys.WORKER_GROUP, None)]) is None  # Redis could not tell
    assert _lag([_group(keys.WORKER_GROUP, "absent")]) is None  # Redis before 7.0
    assert _lag([]) is None  # no group yet: nothing delivered, the stream's length waits


def test_a_missing_stream_waits_nothing_and_other_errors_raise() -> None:
    assert _lag(ResponseError("ERR no such key")) == 0
    with pytest.raises(ResponseError):
        _lag(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))


def test_the_count_is_length_minus_pending() -> None:
    assert _undelivered(7, [3, b"1-0", b"2-0", []]) == 4
    assert _undelivered(7, ResponseError("NOGROUP")) == 7
