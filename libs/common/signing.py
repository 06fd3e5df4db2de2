"""HMAC request signing of FlickrHub API keys: the canonical string, the signature and its headers.

Pure (no I/O): the gateway verifies with it and clients (the CLI, tests, docs/auth.md's
snippet) sign with it. The canonical string is, joined by "\\n":

    METHOD            upper case HTTP verb; POST for every gRPC call
    PATH              the raw request path (REST), or the full gRPC method path
                      `/flickrhub.v1.JobService/SubmitJob`
    SORTED_QUERY      the query's `name=value` pairs exactly as sent (percent-encoding kept),
                      sorted by name then value and joined with "&"; empty over gRPC
    SHA256_HEX(BODY)  hex SHA-256 of the raw body bytes (REST), or of the serialized request
                      message (gRPC); of no bytes for a bodiless request and for client-streaming
                      calls (uploads), whose payload is not covered
    TIMESTAMP         the x-timestamp value (unix seconds)
    NONCE             the x-nonce value (8-64 of A-Z a-z 0-9 _ -)

and x-signature is `v1=<hex HMAC-SHA256(signing_secret, canonical)>`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

HEADER_KEY_ID = "x-api-key-id"
HEADER_TIMESTAMP = "x-timestamp"
HEADER_NONCE = "x-nonce"
HEADER_SIGNATURE = "x-signature"
VERSION = "v1"
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sorted_query(raw_query: str) -> str:
    """The query string's pairs, kept as sent (still percent-encoded) and sorted."""
    if not raw_query:
        return ""
    pairs = [part if "=" in part else f"{part}=" for part in raw_query.split("&") if part]
    return "&".join(sorted(pairs, key=lambda p: (p.partition("=")[0], p.partition("=")[2])))


def canonical_string(
    method: str, path: str, raw_query: str, body_sha256: str, timestamp: str, nonce: str
) -> str:
    """The exact text that is signed."""
    return "\n".join((method.upper(), path, sorted_query(raw_query), body_sha256, timestamp, nonce))


def signature(signing_secret: str, canonical: str) -> str:
    """`v1=<hex>` for a canonical string."""
    digest = hmac.new(signing_secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def matches(signing_secret: str, canonical: str, presented: str) -> bool:
    """Constant-time comparison of a presented x-signature with the expected one."""
    return hmac.compare_digest(signature(signing_secret, canonical).encode(), presented.strip().encode())


def sign_headers(
    key_id: str,
    signing_secret: str,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers (or gRPC metadata entries) of a signed request."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    canonical = canonical_string(method, path, query, hashlib.sha256(body).hexdigest(), timestamp, nonce)
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(signing_secret, canonical),
    }
