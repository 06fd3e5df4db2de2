"""The mover's lean RESP2 connection: packing commands and parsing replies, without a server."""

from __future__ import annotations

import pytest
from redis.exceptions import DataError, NoScriptError, ResponseError

from mover.wire import _Incomplete, pack, parse


def test_commands_pack_as_resp_arrays_of_bulk_strings() -> None:
    assert pack([("SET", "k", "välue"), ("INCRBY", "n", 5)]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\nv\xc3\xa4lue\r\n*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$1\r\n5\r\n"
    )
    with pytest.raises(DataError):
        pack([("SET", "k", True)])


def test_replies_parse_to_the_shapes_redis_sends() -> None:
    # XREADGROUP over two streams: one with an entry, one without (left out by Redis).
    data = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n"
    data += b"*4\r\n$1\r\na\r\n$3\r\nb\xc3\xa9\r\n$1\r\nc\r\n$0\r\n\r\n"
    data += b":42\r\n+OK\r\n$-1\r\n*-1\r\n"
    replies, pos = [], 0
    while pos < len(data):
        value, pos = parse(data, pos)
        replies.append(value)
    assert replies == [[["s", [["1-0", ["a", "bé", "c", ""]]]]], 42, "OK", None, None]


def test_an_error_reply_is_the_exception_redis_py_would_raise_in_its_place() -> None:
    nogroup, _ = parse(b"-NOGROUP No such key 's' or consumer group 'g'\r\n", 0)
    assert isinstance(nogroup, ResponseError) and "NOGROUP" in str(nogroup)
    noscript, _ = parse(b"-NOSCRIPT No matching script.\r\n", 0)
    assert isinstance(noscript, NoScriptError)


@pytest.mark.parametrize("cut", [1, 5, 9, 14, 18])
def test_a_reply_cut_anywhere_asks_for_more_bytes(cut: int) -> None:
    data = b"*2\r\n$5\r\nhello\r\n:7\r\n"
    with pytest.raises(_Incomplete):
        parse(data[:cut], 0)
    assert parse(data, 0) == (["hello", 7], len(data))
