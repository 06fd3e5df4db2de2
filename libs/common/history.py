"""Job history queries (ListJobs): one user's jobs, newest first, filtered, in keyset pages.

SecantusDB plans an index only when the filter is equalities on an index's leading fields plus at
most one range on the field right after them (no `$or`), so every filter here has that shape: the
equalities of JobQuery, then one range on `created_at` holding the time range and the page cursor.
Rows that share the cursor's millisecond are skipped here, by `job_id`, instead of an `$or` in the
filter. mongo.INDEXES holds one index per combination of equalities, each ending in
(created_at, job_id) so MongoDB walks it in the order of the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from common.mongo import Doc

NEWEST_FIRST = [("created_at", -1), ("job_id", -1)]
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class JobQuery:
    """What a page of job history asks for; None means "any"."""

    user_id: str
    client_id: str | None = None
    state: str | None = None
    method: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    after: tuple[datetime, str] | None = None  # page cursor: (created_at, job_id) of the last row shown


def list_filter(query: JobQuery) -> Doc:
    """The MongoDB filter of `query` (equalities, then one range on created_at)."""
    found: Doc = {"user_id": query.user_id}
    if query.client_id is not None:
        found["client_id"] = query.client_id
    if query.state is not None:
        found["status"] = query.state
    if query.method is not None:
        found["method"] = query.method
    window: dict[str, Any] = {}
    if query.created_after is not None:
        # "At or after" written as "after the millisecond before" (MongoDB stores milliseconds):
        # SecantusDB 0.7 loses the rows equal to an inclusive bound that ends its scan of a
        # descending compound key, which `$gte` here is; an exclusive one it gets right.
        window["$gt"] = _ms_ceil(query.created_after) - _MS
    cursor_at = query.after[0] if query.after is not None else None
    if cursor_at is not None and (query.created_before is None or cursor_at < query.created_before):
        window["$lte"] = cursor_at  # ties with the cursor row are skipped by job_id in list_page
    elif query.created_before is not None:
        window["$lt"] = query.created_before
    if window:
        found["created_at"] = window
    return found


def _ms_ceil(at: datetime) -> datetime:
    """`at` rounded up to a whole millisecond."""
    whole = at.replace(microsecond=at.microsecond // 1000 * 1000)
    return whole if whole == at else whole + _MS


def _past_cursor(doc: Doc, after: tuple[datetime, str] | None) -> bool:
    if after is None:
        return True
    created, job_id = after
    return bool(doc["created_at"] < created or str(doc["job_id"]) < job_id)


async def list_page(collection: AsyncCollection[Doc], query: JobQuery, limit: int) -> list[Doc]:
    """Up to `limit` jobs matching `query`, newest first, strictly after its cursor."""
    out: list[Doc] = []
    cursor = collection.find(list_filter(query), {"_id": 0, "callback_secret": 0}).sort(NEWEST_FIRST)
    cursor = cursor.batch_size(limit + 2)
    try:
        async for doc in cursor:
            if _past_cursor(doc, query.after):
                out.append(doc)
                if len(out) >= limit:
                    break
    finally:
        await cursor.close()
    return out
