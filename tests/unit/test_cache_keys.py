"""Cache key names and the request digest: canonical, scoped per token, one cluster slot per token."""

from __future__ import annotations

import hashlib

from redis.crc import key_slot

from common import keys

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32
METHOD = "flickr.photos.search"


def test_digest_does_not_depend_on_param_order() -> None:
    forward = {"text": "cats", "per_page": "50", "extras": "url_o,tags"}
    backward = dict(reversed(list(forward.items())))
    assert list(forward) != list(backward)
    assert keys.cache_digest(METHOD, forward, TOKEN_A) == keys.cache_digest(METHOD, backward, TOKEN_A)


def test_digest_differs_per_token_method_and_params() -> None:
    base = keys.cache_digest(METHOD, {"text": "cats"}, TOKEN_A)
    others = {
        keys.cache_digest(METHOD, {"text": "cats"}, TOKEN_B),
        keys.cache_digest("flickr.groups.search", {"text": "cats"}, TOKEN_A),
        keys.cache_digest(METHOD, {"text": "dogs"}, TOKEN_A),
        keys.cache_digest(METHOD, {"tags": "cats"}, TOKEN_A),
        keys.cache_digest(METHOD, {"text": "cats", "page": "2"}, TOKEN_A),
        keys.cache_digest(METHOD, {}, TOKEN_A),
    }
    assert base not in others and len(others) == 6


def test_digest_cannot_be_forged_by_moving_separators_between_fields() -> None:
    # A naive "k=v&k=v" or "method|params|token" join would make these collide.
    pairs = [
        ({"a": "1&b=2"}, {"a": "1", "b": "2"}),
        ({"a": "1", "b": ""}, {"a": "1b"}),
        ({"a,b": "c"}, {"a": "b,c"}),
        ({'x"]': "y"}, {"x": '"]y'}),
    ]
    for left, right in pairs:
        assert keys.cache_digest(METHOD, left, TOKEN_A) != keys.cache_digest(METHOD, right, TOKEN_A)
    # Nor by shifting the token into the params, or part of the method into the token.
    assert keys.cache_digest(METHOD, {"token_id_hash": TOKEN_A}, TOKEN_B) != keys.cache_digest(
        METHOD, {}, TOKEN_A
    )


def test_canonical_form_is_sorted_compact_utf8_json() -> None:
    params = {"text": "Zürich 東京 🐈", "b": "2", "a": "1"}
    canonical = '["flickr.photos.search",[["a","1"],["b","2"],["text","Zürich 東京 🐈"]],"' + TOKEN_A + '"]'
    assert keys.cache_digest(METHOD, params, TOKEN_A) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_unicode_is_compared_as_given_not_normalised() -> None:
    # Flickr receives the exact characters, so NFC "é" and NFD "e + U+0301" are two different requests.
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert keys.cache_digest(METHOD, {"text": nfc}, TOKEN_A) != keys.cache_digest(
        METHOD, {"text": nfd}, TOKEN_A
    )
    assert keys.cache_digest(METHOD, {"text": nfc}, TOKEN_A) == keys.cache_digest(
        METHOD, {"text": "café"}, TOKEN_A
    )


def test_digest_is_sha256_hex() -> None:
    digest = keys.cache_digest(METHOD, {"text": "x"}, TOKEN_A)
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_every_key_of_a_token_shares_its_cluster_slot() -> None:
    digest = keys.cache_digest(METHOD, {"text": "x"}, TOKEN_A)
    names = [
        keys.cache_generation(TOKEN_A),
        keys.cache_generation(TOKEN_A, METHOD),
        keys.cache_entry(TOKEN_A, 1_700_000_000_000_000, 1_700_000_000_000_001, digest),
        keys.cache_entry_prefix(TOKEN_A) + "x",
    ]
    assert {key_slot(name.encode()) for name in names} == {key_slot(TOKEN_A.encode())}
    assert all("{" + TOKEN_A + "}" in name for name in names)


def test_generation_and_entry_names_are_distinct_per_scope() -> None:
    assert keys.cache_generation(TOKEN_A) != keys.cache_generation(TOKEN_A, METHOD)
    assert keys.cache_generation(TOKEN_A, METHOD) != keys.cache_generation(TOKEN_A, "flickr.photos.getInfo")
    assert keys.cache_generation(TOKEN_A) != keys.cache_generation(TOKEN_B)
    digest = keys.cache_digest(METHOD, {}, TOKEN_A)
    entry = keys.cache_entry(TOKEN_A, 7, 9, digest)
    assert entry == f"{keys.cache_entry_prefix(TOKEN_A)}7:9:{digest}"
    assert not entry.startswith(keys.cache_generation(TOKEN_A))
    assert keys.CACHE_STATS.startswith(keys.PREFIX)
