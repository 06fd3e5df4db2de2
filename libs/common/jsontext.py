"""Compact JSON text for what FlickrHub stores and queues (stream entries, results, hot copies).

`dumps` writes what `json.dumps(value, separators=(",", ":"), ensure_ascii=False)` writes, through
orjson (several times faster; ~3% of a service's CPU per job went to the standard encoder). What
orjson refuses (an integer beyond 64 bits, a string that is not valid UTF-8) goes through the
standard encoder instead, so nothing that encoded before fails now. Not for text whose exact bytes
are a key (the cache digest keeps the standard encoder).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """Compact JSON of `value`, UTF-8 unescaped."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
