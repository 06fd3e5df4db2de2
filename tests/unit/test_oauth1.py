"""The OAuth 1.0a signer reproduces RFC 5849, Flickr's published vectors, and oauthlib on any input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oauthlib.oauth1.rfc5849 import signature as oauthlib_sig

from common import oauth1
from common.oauth1 import Credentials

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "oauth_vectors.json").read_text(encoding="utf-8")
)["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}

# RFC 5849 §3.4.1.1: the request, and the parameters §3.4.1.3.1 says it carries.
RFC_URL = "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b"
RFC_PARAMS = [
    ("oauth_consumer_key", "9djdj82h48djs9d2"),
    ("oauth_token", "kkk9d7dh3k39sjv7"),
    ("oauth_signature_method", "HMAC-SHA1"),
    ("oauth_timestamp", "137131201"),
    ("oauth_nonce", "7d8f3e4a"),
    ("c2", ""),  # body "c2&a3=2+q"
    ("a3", "2 q"),
]
RFC_NORMALIZED = (
    "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2"
    "&oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201"
    "&oauth_token=kkk9d7dh3k39sjv7"
)
RFC_BASE_STRING = (
    "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D"
    "%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a"
    "%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
)
# The photos request of OAuth Core 1.0 Appendix A.5 (signature tR3+…) and of RFC 5849 §1.2 (MdpQ…).
PHOTOS_URL = "http://photos.example.net/photos?file=vacation.jpg&size=original"
PHOTOS_CREDS = Credentials("dpf43f3p2l4k3l03", "kd94hf93k423kf44", "nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")


def _oauthlib_base_string(method: str, url: str, params: list[tuple[str, str]]) -> str:
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    normalized = oauthlib_sig.normalize_parameters([*params, *query])
    return str(oauthlib_sig.signature_base_string(method, oauthlib_sig.base_string_uri(url), normalized))


def _oauthlib_sign(base: str, consumer_secret: str, token_secret: str) -> str:
    with warnings.catch_warnings():  # sign_hmac_sha1 is deprecated in favour of the *_with_client form
        warnings.simplefilter("ignore", DeprecationWarning)
        return str(oauthlib_sig.sign_hmac_sha1(base, consumer_secret, token_secret))


# --- RFC 5849 -------------------------------------------------------------------------------------


def test_rfc5849_example_normalizes_query_and_body_params_as_the_rfc_prints() -> None:
    query = parse_qsl(urlsplit(RFC_URL).query, keep_blank_values=True)
    assert oauth1.normalized_params([*RFC_PARAMS, *query]) == RFC_NORMALIZED


def test_rfc5849_example_base_string_matches_the_rfc() -> None:
    assert oauth1.base_string("post", RFC_URL, RFC_PARAMS) == RFC_BASE_STRING


def test_rfc5849_example_signature_matches_oauthlib() -> None:
    # The RFC prints no secrets for this request, so its signature is checked against oauthlib instead.
    ours = oauth1.sign("POST", RFC_URL, RFC_PARAMS, "j49sk3j29djd", "dh893hdasih9")
    assert ours == _oauthlib_sign(RFC_BASE_STRING, "j49sk3j29djd", "dh893hdasih9")


@pytest.mark.parametrize(
    ("nonce", "timestamp", "version", "expected"),
    [
        ("kllo9940pd9333jh", 1191242096, True, "tR3+Ty81lMeYAr/Fid0kMTYa/WM="),  # OAuth Core 1.0 A.5
        ("chapoH", 137131202, False, "MdpQcU8iPSUjWoN/UDMsK2sui9I="),  # RFC 5849 §1.2
    ],
)
def test_photos_example_signature(nonce: str, timestamp: int, version: bool, expected: str) -> None:
    params = oauth1.oauth_params(PHOTOS_CREDS, nonce=nonce, timestamp=timestamp)
    if not version:
        del params["oauth_version"]
    signed = oauth1.sign(
        "GET", PHOTOS_URL, params.items(), PHOTOS_CREDS.consumer_secret, PHOTOS_CREDS.token_secret
    )
    assert signed == expected


# --- Flickr's vectors -----------------------------------------------------------------------------


def _vector_cases() -> list[Any]:
    cases = []
    for vector in VECTORS:
        base = (
            BY_NAME[next(n for n in BY_NAME if n.startswith(vector["same_as"]))]
            if "same_as" in vector
            else vector
        )
        cases.append(pytest.param(base, vector["token_secret"], vector["signature"], id=vector["name"]))
        if "with_token_secret" in vector:
            extra = vector["with_token_secret"]
            cases.append(
                pytest.param(base, extra["token_secret"], extra["signature"], id=vector["name"] + " +ts")
            )
    return cases


@pytest.mark.parametrize(("vector", "token_secret", "signature"), _vector_cases())
def test_flickr_vector_signature(vector: dict[str, Any], token_secret: str, signature: str) -> None:
    params = list(vector["params"].items())
    assert (
        oauth1.sign(vector["method"], vector["url"], params, vector["consumer_secret"], token_secret)
        == signature
    )


@pytest.mark.parametrize("vector", [v for v in VECTORS if "base_string" in v], ids=lambda v: v["name"])
def test_flickr_vector_base_string(vector: dict[str, Any]) -> None:
    assert (
        oauth1.base_string(vector["method"], vector["url"], vector["params"].items()) == vector["base_string"]
    )


def test_flickr_vector_double_encodes_rfc3986_reserved_characters() -> None:
    case = BY_NAME["flickr-sdk unit test (generic OAuth, spaces in secrets)"]["rfc3986_case"]
    assert oauth1.base_string("GET", "http://www.example.com", case["params"].items()) == case["base_string"]


def test_flickr_vector_signature_urlencoded_form() -> None:
    vector = VECTORS[0]
    assert oauth1.percent_encode(vector["signature"]) == vector["signature_urlencoded"]


def test_flickr_vector_verifies_with_its_signature() -> None:
    vector = BY_NAME["flickr-docs access_token"]
    params = [*vector["params"].items(), ("oauth_signature", vector["signature"])]
    assert oauth1.verify("GET", vector["url"], params, vector["consumer_secret"], vector["token_secret"])


# --- building blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("abcXYZ019-._~", "abcXYZ019-._~"),
        ("a b+c/d", "a%20b%2Bc%2Fd"),
        ("!'()*", "%21%27%28%29%2A"),
        ("ö€😀", "%C3%B6%E2%82%AC%F0%9F%98%80"),
        ("", ""),
    ],
)
def test_percent_encode_keeps_only_unreserved_characters(raw: str, encoded: str) -> None:
    assert oauth1.percent_encode(raw) == encoded


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTP://API.Flickr.COM:80/services/rest/", "http://api.flickr.com/services/rest/"),
        ("https://api.flickr.com:443/services/rest?x=1#frag", "https://api.flickr.com/services/rest"),
        ("http://127.0.0.1:45383/services/rest", "http://127.0.0.1:45383/services/rest"),
        ("https://api.flickr.com:80/Services/REST", "https://api.flickr.com:80/Services/REST"),
        ("http://user:pw@[::1]:8080/p", "http://[::1]:8080/p"),
        ("http://www.example.com", "http://www.example.com"),
    ],
)
def test_normalize_url_lowercases_drops_default_port_and_keeps_path(url: str, normalized: str) -> None:
    assert oauth1.normalize_url(url) == normalized


def test_normalized_params_excludes_signature_and_realm_and_sorts_by_value_on_ties() -> None:
    params = [("b", "2"), ("a", "z"), ("a", "y"), ("oauth_signature", "x"), ("realm", "Flickr"), ("a b", "")]
    assert oauth1.normalized_params(params) == "a=y&a=z&a%20b=&b=2"


def test_oauth_params_has_fresh_nonce_and_time_and_optional_fields() -> None:
    first = oauth1.oauth_params(Credentials("ck", "cs"))
    second = oauth1.oauth_params(Credentials("ck", "cs"))
    assert first["oauth_nonce"] != second["oauth_nonce"]
    assert first["oauth_timestamp"].isdigit()
    assert "oauth_token" not in first
    assert first["oauth_signature_method"] == "HMAC-SHA1"
    assert first["oauth_version"] == "1.0"
    full = oauth1.oauth_params(
        Credentials("ck", "cs", "tok", "ts"), nonce="n", timestamp=7, callback="oob", verifier="v"
    )
    assert full == {
        "oauth_consumer_key": "ck",
        "oauth_nonce": "n",
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "7",
        "oauth_version": "1.0",
        "oauth_token": "tok",
        "oauth_callback": "oob",
        "oauth_verifier": "v",
    }


def test_credentials_repr_never_shows_secrets() -> None:
    creds = Credentials("key-1", "consumer-SECRET", "token-1", "token-SECRET")
    text = repr(creds)
    assert "key-1" in text
    assert "token-1" in text
    assert "SECRET" not in text
    assert "SECRET" not in str(creds)


def test_signed_params_verify_and_carry_the_request_params() -> None:
    creds = Credentials("ck", "cs", "tok", "tsec")
    url = "https://api.flickr.com/services/rest/"
    signed = oauth1.signed_params("POST", url, {"method": "flickr.test.echo", "foo": "bär"}, creds)
    assert signed["foo"] == "bär"
    assert signed["oauth_token"] == "tok"
    assert oauth1.verify("POST", url, signed.items(), "cs", "tsec")
    assert not oauth1.verify("POST", url, signed.items(), "cs", "other")
    assert not oauth1.verify("GET", url, signed.items(), "cs", "tsec")
    assert not oauth1.verify("POST", url.rstrip("/"), signed.items(), "cs", "tsec")
    assert not oauth1.verify("POST", url, {**signed, "foo": "bar"}.items(), "cs", "tsec")


def test_verify_rejects_missing_duplicate_or_foreign_signatures() -> None:
    creds = Credentials("ck", "cs")
    url = "http://h/p"
    signed = oauth1.signed_params("GET", url, {"a": "1"}, creds)
    without = [(k, v) for k, v in signed.items() if k != "oauth_signature"]
    assert not oauth1.verify("GET", url, without, "cs", "")
    assert not oauth1.verify(
        "GET", url, [*signed.items(), ("oauth_signature", signed["oauth_signature"])], "cs", ""
    )
    assert not oauth1.verify("GET", url, {**signed, "oauth_signature": "ünicode"}.items(), "cs", "")
    plaintext = {**signed, "oauth_signature_method": "PLAINTEXT"}
    plaintext["oauth_signature"] = oauth1.sign("GET", url, plaintext.items(), "cs")
    assert not oauth1.verify("GET", url, plaintext.items(), "cs", "")


def test_authorization_header_round_trips_and_signs_the_body_params() -> None:
    creds = Credentials("c k", "cs", "tok", "tsec")
    url = "https://api.flickr.com/services/rest"
    body = {"method": "flickr.photos.setMeta", "title": 'a, "quoted" title'}
    header = oauth1.authorization_header("POST", url, body, creds, nonce="n=1", timestamp=1, verifier="v")
    assert header.startswith('OAuth oauth_consumer_key="c%20k", oauth_nonce="n%3D1"')
    parsed = oauth1.parse_authorization_header(header)
    assert "title" not in parsed
    assert parsed["oauth_consumer_key"] == "c k"
    assert parsed["oauth_verifier"] == "v"
    assert oauth1.verify("POST", url, [*body.items(), *parsed.items()], "cs", "tsec")


def test_parse_authorization_header_accepts_realm_and_loose_spacing() -> None:
    value = 'oauth realm="Example",oauth_nonce = "a%20b" ,  oauth_token=""'
    assert oauth1.parse_authorization_header(value) == {
        "realm": "Example",
        "oauth_nonce": "a b",
        "oauth_token": "",
    }
    assert oauth1.parse_authorization_header("OAuth ") == {}


@pytest.mark.parametrize(
    "value", ["Bearer abc", "OAuth oauth_nonce=abc", 'OAuth a="1" b="2"', 'OAuth a="1",,']
)
def test_parse_authorization_header_rejects_malformed_values(value: str) -> None:
    with pytest.raises(ValueError, match="OAuth"):
        oauth1.parse_authorization_header(value)


# --- property: oauthlib agrees on arbitrary input -------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # no lone surrogates: not UTF-8
_names = _text.filter(lambda name: name not in ("oauth_signature", "realm"))
_hosts = st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,10}(\.[a-zA-Z]{2,5}){0,2}", fullmatch=True)
# No ";": oauthlib's urlparse drops an empty ";params" part, while we keep the path exactly as sent.
_paths = st.lists(st.from_regex(r"[A-Za-z0-9._~!$&'()*+,=:@-]{1,8}", fullmatch=True), min_size=1, max_size=3)
_urls = st.builds(
    lambda scheme, host, port, segments: f"{scheme}://{host}{port}/{'/'.join(segments)}",
    st.sampled_from(["http", "https", "HTTP"]),
    _hosts,
    st.sampled_from(["", ":80", ":443", ":8080", ":1"]),
    _paths,
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "put", "DELETE"]),
    url=_urls,
    params=st.lists(st.tuples(_names, _text), max_size=8),
    consumer_secret=_text,
    token_secret=_text,
)
def test_sign_equals_oauthlib_for_arbitrary_unicode_params(
    method: str, url: str, params: list[tuple[str, str]], consumer_secret: str, token_secret: str
) -> None:
    assert oauth1.normalize_url(url) == oauthlib_sig.base_string_uri(url)
    assert oauth1.normalized_params(params) == oauthlib_sig.normalize_parameters(params)
    expected_base = _oauthlib_base_string(method, url, params)
    assert oauth1.base_string(method, url, params) == expected_base
    expected = _oauthlib_sign(expected_base, consumer_secret, token_secret)
    assert oauth1.sign(method, url, params, consumer_secret, token_secret) == expected
    signed = [*params, ("oauth_signature", expected)]
    assert oauth1.verify(method, url, signed, consumer_secret, token_secret)


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(_names.filter(lambda n: not n.startswith("oauth_")), _text, max_size=6),
    nonce=_text,
    verifier=_text,
)
def test_authorization_header_round_trips_any_value(
    params: dict[str, str], nonce: str, verifier: str
) -> None:
    creds = Credentials("ck", "cs", "tok", "tsec")
    header = oauth1.authorization_header("POST", "https://h/p", params, creds, nonce=nonce, verifier=verifier)
    parsed = oauth1.parse_authorization_header(header)
    assert parsed["oauth_nonce"] == nonce
    assert parsed["oauth_verifier"] == verifier
    assert oauth1.verify("POST", "https://h/p", [*params.items(), *parsed.items()], "cs", "tsec")
