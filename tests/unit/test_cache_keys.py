"""Cache key names and the request digest (canonical, per token, one slot per token); cache settings."""

from __future__ import annotations

import hashlib

import pytest
from redis.crc import key_slot

from common import keys
from common.settings import Settings, SettingsError

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
        keys.cache_entry(TOKEN_A, digest),
        keys.cache_entry_prefix(TOKEN_A) + "x",
    ]
    assert {key_slot(name.encode()) for name in names} == {key_slot(TOKEN_A.encode())}
    assert all("{" + TOKEN_A + "}" in name for name in names)


def test_generation_and_entry_names_are_distinct_per_scope() -> None:
    assert keys.cache_generation(TOKEN_A) != keys.cache_generation(TOKEN_A, METHOD)
    assert keys.cache_generation(TOKEN_A, METHOD) != keys.cache_generation(TOKEN_A, "flickr.photos.getInfo")
    assert keys.cache_generation(TOKEN_A) != keys.cache_generation(TOKEN_B)
    digest = keys.cache_digest(METHOD, {}, TOKEN_A)
    entry = keys.cache_entry(TOKEN_A, digest)
    # No generations in the name: an entry names them in its value (cache/store.py).
    assert entry == f"fhc:e:{{{TOKEN_A}}}:{digest}" == f"{keys.cache_entry_prefix(TOKEN_A)}{digest}"
    assert entry != keys.cache_entry(TOKEN_B, digest)
    assert not entry.startswith(keys.cache_generation(TOKEN_A))
    assert keys.CACHE_STATS.startswith(keys.PREFIX)


def test_ttl_overrides_parse_per_method_and_allow_zero_for_never() -> None:
    settings = Settings.from_env(
        env={
            "CACHE_TTL_OVERRIDES": " flickr.photos.getInfo=600, flickr.photos.search=30,"
            "flickr.photos.getExif=0 "
        }
    )
    assert settings.cache_ttls == {
        "flickr.photos.getInfo": 600,
        "flickr.photos.search": 30,
        "flickr.photos.getExif": 0,
    }
    assert Settings.from_env(env={}).cache_ttls == {}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("flickr.photos.getInfo", "expected flickr"),
        ("flickr.photos.getInfo=ten", "expected flickr"),
        ("photos.getInfo=60", "expected flickr"),
        ("flickr.photos.getInfo=-1", "expected flickr"),
        ("flickr.photos.delete=60", "never cached"),
        ("flickr.something.unknown=60", "never cached"),
        ("flickr.photos.getInfo=86401", "at most 86400"),
        ("flickr.photos.getInfo=1,flickr.photos.getInfo=2", "twice"),
    ],
)
def test_a_bad_ttl_override_fails_at_start_naming_the_variable(raw: str, why: str) -> None:
    with pytest.raises(SettingsError, match=f"CACHE_TTL_OVERRIDES: .*{why}"):
        Settings.from_env(env={"CACHE_TTL_OVERRIDES": raw})


def test_warming_is_off_by_default_and_its_knobs_are_checked() -> None:
    assert Settings.from_env(env={}).cache_warm_enabled is False
    assert Settings.from_env(env={"CACHE_WARM_ENABLED": "true"}).cache_warm_enabled is True
    for name, bad in (
        ("CACHE_WARM_TOP", "0"),
        ("CACHE_WARM_MAX_PER_MIN", "0"),
        ("CACHE_WARM_MIN_REQUESTS", "0"),
        ("CACHE_WARM_INTERVAL_S", "0"),
        ("CACHE_WARM_ENABLED", "maybe"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(env={name: bad})
