"""Every Redis key, stream, group and channel name FlickrHub uses, built in one place.

Keys that belong to one token carry the token's hash tag (`{<token_id_hash>}`)
so a token's keys share one cluster slot and its Lua scripts stay cluster-legal.
Nothing needs one atomic step across two tokens or between a token key and a
work stream: moving is "append, then acknowledge", made safe by idempotent consumers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

PREFIX = "fh"
TARGETS = ("rest", "upload", "replace")

# Consumer groups
MOVER_GROUP = "movers"
WORKER_GROUP = "workers"
WEBHOOK_GROUP = "webhooks"

# Global streams and sets (queue Redis)
ACTIVE_TOKENS = f"{PREFIX}:active"
DELAYED = f"{PREFIX}:delayed"
DEAD_LETTERS = f"{PREFIX}:dlq"
# The dead-letter stream is trimmed (approximately) to this length; the job document keeps every failure.
DEAD_LETTERS_MAX = 100_000
WEBHOOKS = f"{PREFIX}:hooks"


def token_stream(token_id_hash: str) -> str:
    """Per-token queue stream the gateway appends to and the mover reads."""
    return f"{PREFIX}:q:{{{token_id_hash}}}"


def work_stream(target: str) -> str:
    """Work stream of one target (rest, upload, replace) the workers read.

    The three share the hash tag `{work}` so one XREADGROUP can block on all of them on a cluster.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    return f"{PREFIX}:work:{{work}}:{target}"


def delayed_lock() -> str:
    """Lease held by the one mover that pumps due retries back into token queues."""
    return f"{PREFIX}:lock:delayed"


def job_events(job_id: str) -> str:
    """Pub/sub channel on which a job's state changes are announced."""
    return f"{PREFIX}:ev:{job_id}"


# Cache Redis


def cache_generation(token_id_hash: str, method: str = "") -> str:
    """Generation counter of a token's (or token+method's) cache scope; INCR invalidates it in O(1)."""
    suffix = f":{method}" if method else ""
    return f"{PREFIX}c:gen:{{{token_id_hash}}}{suffix}"


def cache_digest(method: str, params: Mapping[str, str], token_id_hash: str) -> str:
    """SHA-256 of (method, canonically sorted params, token id)."""
    canonical = json.dumps(
        [method, sorted(params.items()), token_id_hash], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_entry_prefix(token_id_hash: str) -> str:
    """Start of every entry key in a token's cache scope (the Lua scripts append generations and digest)."""
    return f"{PREFIX}c:e:{{{token_id_hash}}}:"


def cache_entry(token_id_hash: str, generation: int, method_generation: int, digest: str) -> str:
    """Key of one cached answer inside its token's scope and generations."""
    return f"{cache_entry_prefix(token_id_hash)}{generation}:{method_generation}:{digest}"


CACHE_STATS = f"{PREFIX}c:stats"


def idempotency(token_id_hash: str, key_digest: str) -> str:
    """Reservation of an idempotency key within a token's scope (24 h)."""
    return f"{PREFIX}:idem:{{{token_id_hash}}}:{key_digest}"


def flickr_budget(api_key_hash: str) -> str:
    """GCRA state of one Flickr API key's hourly budget (shared by every mover)."""
    return f"{PREFIX}:budget:{{{api_key_hash}}}"


def breaker(name: str) -> str:
    """State of one circuit breaker (`key:<api key hash>` or `flickr`)."""
    return f"{PREFIX}:breaker:{{{name}}}"


# API keys (queue Redis). Each key's entries carry the hash tag `{k:<key_id>}` so its rate-limit
# buckets share one slot and the one Lua step that checks them stays cluster-legal.


def _api_key_tag(key_id: str) -> str:
    return f"{{k:{key_id}}}"


def api_key_rate(key_id: str, bucket: str) -> str:
    """GCRA state (theoretical arrival time, ms) of one API key's bucket: `all` or a method class."""
    return f"{PREFIX}:krl:{_api_key_tag(key_id)}:{bucket}"


def api_key_nonce(key_id: str, nonce: str) -> str:
    """Marker of a signed request's nonce, kept for the clock-skew window so a replay is refused."""
    digest = hashlib.sha256(nonce.encode()).hexdigest()[:32]
    return f"{PREFIX}:nonce:{_api_key_tag(key_id)}:{digest}"
