"""The audit log's documents: one bucket per write, holding the entries of every call it covers.

Every call still gets its own entry (`created_at, rpc, key_id, client_ip, user_id_hash, outcome,
reason, latency_ms, auth`, or a tool's `action` record), but the entries a writer flushes together
share one `audit_log` document, MongoDB's bucket pattern for append-only logs:

    {created_at: <first entry's>, until: <last entry's>, count: n, entries: [entry, ...]}

A document costs the server per document (its `_id` and TTL index entries, its own record), not per
byte: on SecantusDB a one-entry document cost ~0.15-0.2 ms of server CPU, a bucket of 200 entries
~0.01 ms per entry (scripts/mongo_write_cost.py has the method), and the gateway writes an entry
for every call. The TTL index on `created_at` (AUDIT_RETENTION_DAYS) expires a bucket with its first entry.

Read entries with `entries()` (an aggregation that unwinds the buckets) or, in the mongo shell,
`db.audit_log.aggregate([{$unwind: "$entries"}, {$replaceRoot: {newRoot: "$entries"}}, {$match: ...}])`.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

Doc = dict[str, Any]

# Entries per bucket at most (a bucket of entries of ~200 bytes stays far below MongoDB's 16 MB).
MAX_ENTRIES = 500


def bucket(entries: list[Doc]) -> Doc:
    """The document holding `entries` (each with its own `created_at`, oldest first)."""
    if not entries:
        raise ValueError("an audit bucket holds at least one entry")
    return {
        "created_at": entries[0]["created_at"],
        "until": entries[-1]["created_at"],
        "count": len(entries),
        "entries": entries,
    }


async def entries(collection: AsyncCollection[Doc], match: Doc | None = None) -> list[Doc]:
    """Every entry (matching `match`, a filter on entry fields), oldest bucket first."""
    pipeline: list[Doc] = [
        {"$sort": {"created_at": 1}},
        {"$unwind": "$entries"},
        {"$replaceRoot": {"newRoot": "$entries"}},
    ]
    if match:
        pipeline.append({"$match": match})
    return [doc async for doc in await collection.aggregate(pipeline)]
