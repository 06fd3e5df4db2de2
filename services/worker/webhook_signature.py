"""Webhook signatures: HMAC-SHA256 of the exact body bytes under the job's callback secret."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-FlickrHub-Signature"
SCHEME = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The signature header value: `sha256=<hex digest>`."""
    return SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header_value: str) -> bool:
    """True when `header_value` signs `body` under `secret` (constant-time compare)."""
    return hmac.compare_digest(sign(body, secret), header_value.strip())
