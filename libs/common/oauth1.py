"""OAuth 1.0a HMAC-SHA1 signing and verification (RFC 5849), as Flickr speaks it.

Pure functions, no I/O: the worker signs with them and the sandbox verifies with
them, so both ends agree by construction. Flickr supports only HMAC-SHA1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SIGNATURE_METHOD = "HMAC-SHA1"
OAUTH_VERSION = "1.0"

# Never part of the signature base string (RFC 5849 §3.4.1.3.1).
_EXCLUDED = frozenset({"oauth_signature", "realm"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# One `name="value"` item of an Authorization header, followed by a comma or the end.
_HEADER_ITEM = re.compile(r'\s*([^\s=,"]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


def percent_encode(value: str) -> str:
    """Encode `value` as RFC 5849 §3.6 says: UTF-8, everything but A-Z a-z 0-9 - . _ ~ as %XX."""
    # quote() keeps letters, digits and "_.-~" unescaped; safe="" makes it escape "/" too.
    return quote(value, safe="")


def normalize_url(url: str) -> str:
    """The base string URI: scheme and host lower-cased, default port dropped, no query or fragment."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: hostname drops the brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    # The path is kept exactly as sent: Flickr signs "/services/rest" and "/services/rest/" differently,
    # and an empty path stays empty (flickr-sdk signs "http://www.example.com" that way).
    return f"{scheme}://{netloc}{parts.path}"


def normalized_params(params: Iterable[tuple[str, str]]) -> str:
    """Encoded `name=value` pairs sorted by name then value, joined by "&" (RFC 5849 §3.4.1.3.2)."""
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params if k not in _EXCLUDED)
    return "&".join(f"{k}={v}" for k, v in encoded)


def base_string(http_method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The signature base string; the query parameters of `url` are merged into `params`."""
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    return "&".join(
        (
            percent_encode(http_method.upper()),
            percent_encode(normalize_url(url)),
            percent_encode(normalized_params([*params, *query])),
        )
    )


def sign(
    http_method: str,
    url: str,
    params: Iterable[tuple[str, str]],
    consumer_secret: str,
    token_secret: str = "",
) -> str:
    """The base64 HMAC-SHA1 signature of the request, keyed by `consumer_secret&token_secret`."""
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    text = base_string(http_method, url, params)
    digest = hmac.new(key.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, repr=False)
class Credentials:
    """A consumer (app) key pair and, once authorized, a user's access token pair."""

    consumer_key: str
    consumer_secret: str
    token: str = ""
    token_secret: str = ""

    def __repr__(self) -> str:
        # Keys and tokens identify; secrets never appear, not even in a traceback.
        return f"Credentials(consumer_key={self.consumer_key!r}, token={self.token!r}, secrets=<redacted>)"


def oauth_params(
    creds: Credentials,
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
    callback: str | None = None,
    verifier: str | None = None,
) -> dict[str, str]:
    """The protocol parameters of one request (without oauth_signature); nonce and time are fresh."""
    out = {
        "oauth_consumer_key": creds.consumer_key,
        "oauth_nonce": nonce if nonce is not None else secrets.token_hex(16),
        "oauth_signature_method": SIGNATURE_METHOD,
        "oauth_timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "oauth_version": OAUTH_VERSION,
    }
    if creds.token:
        out["oauth_token"] = creds.token
    if callback is not None:
        out["oauth_callback"] = callback
    if verifier is not None:
        out["oauth_verifier"] = verifier
    return out


def signed_params(
    http_method: str,
    url: str,
    params: Mapping[str, str],
    creds: Credentials,
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
    callback: str | None = None,
    verifier: str | None = None,
) -> dict[str, str]:
    """`params` plus the oauth_* parameters and oauth_signature, ready for a form body or a query."""
    oauth = oauth_params(creds, nonce=nonce, timestamp=timestamp, callback=callback, verifier=verifier)
    out = {**params, **oauth}
    out["oauth_signature"] = sign(http_method, url, out.items(), creds.consumer_secret, creds.token_secret)
    return out


def authorization_header(
    http_method: str,
    url: str,
    params: Mapping[str, str],
    creds: Credentials,
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
    callback: str | None = None,
    verifier: str | None = None,
) -> str:
    """An `Authorization: OAuth …` value signing `params` (which still travel in the body or query)."""
    oauth = oauth_params(creds, nonce=nonce, timestamp=timestamp, callback=callback, verifier=verifier)
    oauth["oauth_signature"] = sign(
        http_method, url, [*params.items(), *oauth.items()], creds.consumer_secret, creds.token_secret
    )
    return "OAuth " + ", ".join(f'{percent_encode(k)}="{percent_encode(v)}"' for k, v in oauth.items())


def parse_authorization_header(value: str) -> dict[str, str]:
    """The decoded parameters of an `OAuth k="v", …` header (realm included); ValueError if malformed."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "oauth":
        raise ValueError("not an OAuth Authorization header")
    out: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        match = _HEADER_ITEM.match(rest, pos)
        if match is None:
            raise ValueError(f"malformed OAuth header parameter at offset {pos}")
        out[unquote(match.group(1))] = unquote(match.group(2))
        pos = match.end()
    return out


def verify(
    http_method: str,
    url: str,
    params: Iterable[tuple[str, str]],
    consumer_secret: str,
    token_secret: str,
) -> bool:
    """True when the single oauth_signature among `params` is the HMAC-SHA1 signature of the request."""
    pairs = list(params)
    given = [v for k, v in pairs if k == "oauth_signature"]
    methods = {v for k, v in pairs if k == "oauth_signature_method"}
    if len(given) != 1 or methods - {SIGNATURE_METHOD}:
        return False
    expected = sign(http_method, url, pairs, consumer_secret, token_secret)
    return hmac.compare_digest(expected.encode("ascii"), given[0].encode("utf-8"))
