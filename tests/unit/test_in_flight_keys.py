"""The in-flight set's member names: what a token's count reads (keys.in_flight_*)."""

from __future__ import annotations

from common import keys


def test_a_member_names_its_token_when_moved_and_job() -> None:
    assert keys.in_flight_member("abc", 1_700_000_000_123, "j1") == "abc|1700000000123|j1"
    assert keys.in_flight_member("abc", 5, "j1") == "abc|0000000000005|j1"  # fixed width: sorts by time


def test_counts_per_token_skip_members_older_than_since() -> None:
    members: list[str | bytes] = [
        keys.in_flight_member("a", 100, "j1"),
        keys.in_flight_member("a", 200, "j2"),
        keys.in_flight_member("ab", 300, "j3").encode(),  # as redis-py answers without decoding
        keys.in_flight_member("b", 50, "j4"),
        "junk-without-separators",
    ]
    assert keys.in_flight_counts(members) == {"a": 2, "ab": 1, "b": 1}
    assert keys.in_flight_counts(members, since_ms=150) == {"a": 1, "ab": 1}


def test_a_tokens_range_holds_only_its_own_names() -> None:
    low, high = keys.in_flight_range("ab", 150)
    inside = [keys.in_flight_member("ab", 150, "x"), keys.in_flight_member("ab", 9_999_999_999_999, "y")]
    outside = [
        keys.in_flight_member("ab", 149, "x"),  # moved before `since`
        keys.in_flight_member("a", 500, "x"),  # a token that is a prefix of another
        keys.in_flight_member("abc", 500, "x"),  # a token that another is a prefix of
        keys.in_flight_member("ab0", 500, "x"),
        keys.in_flight_member("ab~", 500, "x"),
    ]
    assert low.startswith("[") and high.startswith("(")
    for name in inside:
        assert low[1:] <= name < high[1:]
    for name in outside:
        assert not (low[1:] <= name < high[1:]), name
