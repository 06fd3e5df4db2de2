"""Every Redis key, stream, group and channel name FlickrHub uses, built in one place.

Keys that belong to one token carry the token's hash tag (`{<token_id_hash>}`)
so a token's keys share one cluster slot and its Lua scripts stay cluster-legal.
Nothing needs one atomic step across two tokens or between a token key and a
work stream: moving is "append, then acknowledge", made safe by idempotent consumers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

PREFIX = "fh"
TARGETS = ("rest", "upload", "replace")

# Consumer groups
MOVER_GROUP = "movers"
WORKER_GROUP = "workers"
WEBHOOK_GROUP = "webhooks"

# Global streams and sets (queue Redis)
# The scheduler's sets share one hash tag, so a script may touch them together on a cluster.
ACTIVE_TOKENS = f"{PREFIX}:{{sched}}:active"
# Tokens a mover is taking out of the active set, by when it began (a mover killed midway
# leaves the token here, and another mover finishes the job).
DRAINING_TOKENS = f"{PREFIX}:{{sched}}:draining"
# Bumped by every change a mover makes to the active set (the gateway only adds to it, which
# changes its size): a mover lists the set again only when its size or this counter moved.
ACTIVE_CHANGES = f"{PREFIX}:{{sched}}:changes"
# Live movers (consumer name -> last heartbeat, ms): a mover whose heartbeat stopped has its entries
# claimed by the others at once, instead of every mover sweeping every token stream all the time.
MOVERS = f"{PREFIX}:{{sched}}:movers"
DELAYED = f"{PREFIX}:delayed"
# Trimmed (approximately) to DEAD_LETTERS_MAX entries; the job document keeps every failure.
DEAD_LETTERS = f"{PREFIX}:dlq"
WEBHOOKS = f"{PREFIX}:hooks"


# Job priorities, most urgent first; each has its own queue stream per token.
PRIORITIES = ("high", "normal", "low")
# Which client (API key id) last queued work for a token: the mover's fair scheduler groups tokens by it.
TOKEN_CLIENTS = f"{PREFIX}:{{sched}}:token-client"


def token_stream(token_id_hash: str, priority: str = "normal") -> str:
    """Per-token, per-priority queue stream the gateway appends to and the mover reads.

    The normal stream keeps the name it had before priorities had streams of their own, so
    entries queued by an older gateway are still read.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")
    suffix = "" if priority == "normal" else f":{priority}"
    return f"{PREFIX}:q:{{{token_id_hash}}}{suffix}"


def token_streams(token_id_hash: str) -> tuple[str, ...]:
    """Every queue stream of one token, in PRIORITIES order (they share the token's hash tag)."""
    return tuple(token_stream(token_id_hash, p) for p in PRIORITIES)


def work_stream(target: str) -> str:
    """Work stream of one target (rest, upload, replace) the workers read.

    The three share the hash tag `{work}` so one XREADGROUP can block on all of them on a cluster.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    return f"{PREFIX}:work:{{work}}:{target}"


# Every entry in the work streams, for the tokens' in-flight caps: one sorted set whose members all
# score 0 and sort by name, `<token>|<when moved, ms, 13 digits>|<job id>` (see in_flight_member).
# One ZADD carries a mover round's moves and one ZREM a worker turn's acknowledgements, whatever
# their tokens; a token's count is a ZLEXCOUNT over its own range.
IN_FLIGHT = f"{PREFIX}:inflight:{{work}}"


def in_flight_member(token_id_hash: str, moved_ms: int, job_id: str) -> str:
    """The IN_FLIGHT member of one entry moved at `moved_ms` (the work entry carries `moved_ms`)."""
    return f"{token_id_hash}|{moved_ms:013d}|{job_id}"


def in_flight_parsed(member: str | bytes) -> tuple[str, int] | None:
    """(token, when moved, ms) of an IN_FLIGHT member; None for a name in_flight_member did not make."""
    token, _, rest = (member.decode() if isinstance(member, bytes) else member).partition("|")
    moved = rest[:13]
    return (token, int(moved)) if moved.isdigit() and rest[13:14] == "|" else None


def in_flight_counts(members: Iterable[str | bytes], since_ms: int = 0) -> dict[str, int]:
    """Per token, how many of `members` (IN_FLIGHT names) were moved at or after `since_ms`."""
    counts: dict[str, int] = {}
    for member in members:
        parsed = in_flight_parsed(member)
        if parsed is not None and parsed[1] >= since_ms:
            counts[parsed[0]] = counts.get(parsed[0], 0) + 1
    return counts


def in_flight_range(token_id_hash: str, since_ms: int = 0) -> tuple[str, str]:
    """ZLEXCOUNT / ZRANGEBYLEX bounds of a token's members moved at or after `since_ms`.

    '}' sorts right after '|', so the range holds exactly the names that start with `<token>|`.
    """
    return f"[{token_id_hash}|{since_ms:013d}", f"({token_id_hash}}}"


def delayed_lock() -> str:
    """Lease held by the one mover that pumps due retries back into token queues."""
    return f"{PREFIX}:lock:delayed"


# Recovery from MongoDB (common.recovery). The marker is written once queue state is known to be
# whole; a Redis that lost everything (FLUSHALL, a restart without persistence) has lost it too.
QUEUE_MARKER = f"{PREFIX}:marker"
# Set (with a TTL of one sweep interval) by the replica whose turn it is to run the periodic sweep.
RECOVERY_TURN = f"{PREFIX}:recovery:turn"


def recovery_lock() -> str:
    """Lease held by the one process running a recovery sweep (a mover replica or the CLI)."""
    return f"{PREFIX}:lock:recovery"


def job_state(job_id: str) -> str:
    """A job's hot state (common.hotstate; a JSON string): what status reads answer before MongoDB.

    Not `fh:job:` any more: that name held a hash in earlier versions, which a GET cannot read.
    """
    return f"{PREFIX}:js:{job_id}"


def webhook_lease(job_id: str) -> str:
    """Held by the one worker delivering a job's webhook, so two queued deliveries never both POST."""
    return f"{PREFIX}:hooklease:{job_id}"


# Pub/sub channel on which jobs' state changes are announced: one message per batch of changes (a JSON
# list of {"job_id", "state"}), so a worker's turn costs one PUBLISH whatever its number of jobs.
JOB_EVENTS = f"{PREFIX}:ev"


# Cache Redis


def cache_generation(token_id_hash: str, method: str = "") -> str:
    """Generation of a token's (or token+method's) cache scope; moving it forward empties the scope."""
    suffix = f":{method}" if method else ""
    return f"{PREFIX}c:gen:{{{token_id_hash}}}{suffix}"


def cache_digest(method: str, params: Mapping[str, str], token_id_hash: str) -> str:
    """SHA-256 of (method, canonically sorted params, token id)."""
    return hashlib.sha256(cache_canonical(method, params, token_id_hash).encode()).hexdigest()


def cache_entry_prefix(token_id_hash: str) -> str:
    """Start of every entry key in a token's cache scope."""
    return f"{PREFIX}c:e:{{{token_id_hash}}}:"


def cache_entry(token_id_hash: str, digest: str) -> str:
    """Key of one cached answer in its token's scope (its value names the generations it was stored under)."""
    return f"{cache_entry_prefix(token_id_hash)}{digest}"


CACHE_STATS = f"{PREFIX}c:stats"
# Warming (cache Redis): request counts per key, and the lock that lets one replica decay them.
CACHE_HOT = f"{PREFIX}c:hot"
CACHE_HOT_DECAY = f"{PREFIX}c:hot:decay"
# Set (no expiry) by the first maintenance pass: counting has begun, so the next period may decay.
CACHE_HOT_SINCE = f"{PREFIX}c:hot:since"


def cache_canonical(method: str, params: Mapping[str, str], token_id_hash: str) -> str:
    """(method, sorted params, token) as compact JSON: hashed for the digest, stored as is in CACHE_HOT."""
    canonical = [method, sorted(params.items()), token_id_hash]
    return json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)


def cache_warm_claim(token_id_hash: str, digest: str) -> str:
    """Held while one worker refreshes an entry, so two never refetch the same answer."""
    return f"{PREFIX}c:warm:{{{token_id_hash}}}:{digest}"


# One worker per interval looks for entries to warm (queue Redis: a lock, never data).
CACHE_WARM_LOCK = f"{PREFIX}:warm:lock"


def idempotency(token_id_hash: str, key_digest: str) -> str:
    """Reservation of an idempotency key within a token's scope (24 h)."""
    return f"{PREFIX}:idem:{{{token_id_hash}}}:{key_digest}"


def flickr_budget(api_key_hash: str) -> str:
    """GCRA state of one Flickr API key's hourly budget (shared by every mover)."""
    return f"{PREFIX}:budget:{{{api_key_hash}}}"


def breaker(name: str) -> str:
    """State of one circuit breaker (`key:<api key hash>` or `flickr`)."""
    return f"{PREFIX}:breaker:{{{name}}}"


# Counter bumped by every write to the `tokens` collection (store, replace, revoke): processes that
# cache decrypted tokens read it about once a second and forget their cache when it moved.
TOKENS_EPOCH = f"{PREFIX}:tokens:epoch"


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


def api_key_epoch(key_id: str) -> str:
    """Counter bumped by each rotation and revocation of a key; checks cached under another are void."""
    # No expiry: a lost counter reads 0, which differs from any bumped one and so forces a reload.
    return f"{PREFIX}:kepoch:{_api_key_tag(key_id)}"


# Admission (gateway backpressure). Every admission key carries the hash tag `{admit}` so the one
# Lua step that checks a client's open jobs and the total stays cluster-legal; the price is that
# admission lives on one cluster slot, as the work streams do under `{work}`.
OPEN_JOBS = f"{PREFIX}:open:{{admit}}"


def client_open_jobs(client_id: str) -> str:
    """Sorted set of one client's open (accepted, not yet final) job ids, scored by acceptance ms."""
    return f"{PREFIX}:open:{{admit}}:c:{client_id}"
