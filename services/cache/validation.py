"""What the cache service accepts: Flickr method names, token hashes, params, values."""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.errors import FieldViolation
from common.flickr_methods import is_search, is_write
from flickrhub.v1 import cache_pb2

# fullmatch, not match: `$` also matches before a trailing newline.
METHOD_RE = re.compile(r"flickr(\.[A-Za-z0-9_]+){2,}")
METHOD_MAX = 128
TOKEN_RE = re.compile(r"[0-9a-f]{16,64}")
MAX_PARAMS = 64
MAX_PARAM_KEY = 64
MAX_PARAM_VALUE = 4096
MAX_VALUE_BYTES = 1024 * 1024


def method_class(method: str) -> str:
    """write, search or read: the class that decides the TTL."""
    return "write" if is_write(method) else "search" if is_search(method) else "read"


def method_violations(method: str, field: str) -> list[FieldViolation]:
    """A Flickr method name: flickr.<namespace>.<name>, at most 128 characters."""
    if len(method) > METHOD_MAX or not METHOD_RE.fullmatch(method):
        return [FieldViolation(field, f"flickr.<namespace>.<name>, at most {METHOD_MAX} characters")]
    return []


def token_violations(token: str, field: str) -> list[FieldViolation]:
    """The token id hash that scopes every entry: required."""
    if not TOKEN_RE.fullmatch(token):
        return [FieldViolation(field, "required: 16-64 lowercase hex characters")]
    return []


def params_violations(params: Mapping[str, str], field: str) -> list[FieldViolation]:
    """At most 64 params, keys of 1-64 characters, values of at most 4096."""
    if len(params) > MAX_PARAMS:
        return [FieldViolation(field, f"at most {MAX_PARAMS} entries")]
    return [
        FieldViolation(
            f"{field}[{k[:MAX_PARAM_KEY]}]",
            f"keys are 1-{MAX_PARAM_KEY} characters, values at most {MAX_PARAM_VALUE}",
        )
        for k, v in params.items()
        if not 0 < len(k) <= MAX_PARAM_KEY or len(v) > MAX_PARAM_VALUE
    ]


def key_violations(key: cache_pb2.CacheKey) -> list[FieldViolation]:
    """Every problem with a cache key."""
    return [
        *method_violations(key.method, "key.method"),
        *params_violations(key.params, "key.params"),
        *token_violations(key.token_id_hash, "key.token_id_hash"),
    ]
