"""Job history queries (ListJobs): one user's jobs, newest first, filtered, in keyset pages.

mongo.INDEXES holds four history indexes, (client_id?, user_id, status?, created_at desc, job_id
desc): the equalities that narrow most go to MongoDB, and each index ends in the page order. The
`method` filter is applied here, while the index range is walked in that order in bounded rounds:
one call examines at most `MAX_EXAMINED` rows. A call that reaches the bound before its page is
full answers the rows it found (maybe none) and the position of the last row it examined, so the
next call goes on from there: a short page can still have a next page.

SecantusDB plans an index only when the filter is equalities on an index's leading fields plus at
most one range on the field right after them (no `$or`), so a page past a cursor (created_at,
job_id) runs up to two such filters, in page order (`range_filters`):

1. the rest of the cursor's millisecond: the equalities and `created_at` equal to the cursor's,
   then one range `job_id < cursor's`;
2. older rows: the equalities, then one range on `created_at` holding the time range and the cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from common.mongo import Doc

NEWEST_FIRST = [("created_at", -1), ("job_id", -1)]
# Rows one call may read from MongoDB, and rows per round trip when `method` filters them.
MAX_EXAMINED = 1000
ROUND_ROWS = 200
_MS = timedelta(milliseconds=1)
_PROJECTION = {"_id": 0, "callback_secret": 0}


@dataclass(frozen=True)
class JobQuery:
    """What a page of job history asks for; None means "any"."""

    user_id: str
    client_id: str | None = None
    state: str | None = None
    method: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    after: tuple[datetime, str] | None = None  # page cursor: (created_at, job_id) of the last row examined


@dataclass(frozen=True)
class Page:
    """Up to a page of matching jobs, and where the next page starts (None: nothing is left)."""

    jobs: list[Doc]
    resume_after: tuple[datetime, str] | None


def _equalities(query: JobQuery) -> Doc:
    found: Doc = {"user_id": query.user_id}
    if query.client_id is not None:
        found["client_id"] = query.client_id
    if query.state is not None:
        found["status"] = query.state
    return found


def _ms_ceil(at: datetime) -> datetime:
    """`at` rounded up to a whole millisecond."""
    whole = at.replace(microsecond=at.microsecond // 1000 * 1000)
    return whole if whole == at else whole + _MS


def range_filters(query: JobQuery) -> list[Doc]:
    """The MongoDB filters a page walks, in page order (see the module docstring)."""
    filters: list[Doc] = []
    cursor_at = query.after[0] if query.after is not None else None
    if query.created_before is not None and cursor_at is not None and cursor_at >= query.created_before:
        cursor_at = None  # a cursor past the window's end does not narrow it
    if (
        query.after is not None
        and cursor_at is not None
        and (query.created_after is None or cursor_at >= _ms_ceil(query.created_after))
    ):
        filters.append({**_equalities(query), "created_at": cursor_at, "job_id": {"$lt": query.after[1]}})
    window: dict[str, Any] = {}
    if query.created_after is not None:
        # "At or after" written as "after the millisecond before" (MongoDB stores milliseconds):
        # SecantusDB 0.7 loses the rows equal to an inclusive bound that ends its scan of a
        # descending compound key, which `$gte` here is; an exclusive one it gets right.
        window["$gt"] = _ms_ceil(query.created_after) - _MS
    if cursor_at is not None:
        window["$lt"] = cursor_at
    elif query.created_before is not None:
        window["$lt"] = query.created_before
    older = _equalities(query)
    if window:
        older["created_at"] = window
    filters.append(older)
    return filters


def matches(query: JobQuery, doc: Doc) -> bool:
    """The part of `query` no index holds: the method."""
    return query.method is None or doc.get("method") == query.method


async def list_page(
    collection: AsyncCollection[Doc], query: JobQuery, limit: int, *, max_examined: int | None = None
) -> Page:
    """Up to `limit` jobs matching `query`, newest first, strictly after its cursor.

    Reads at most `max_examined` rows (default MAX_EXAMINED). `resume_after` is the last job of a
    full page when more may follow, the last row examined when the bound stopped the walk, and
    None when the range ran out.
    """
    max_examined = MAX_EXAMINED if max_examined is None else max_examined
    # A small bound still takes a few round trips (tests walk that path with a bound of 7).
    round_rows = min(ROUND_ROWS, max(1, max_examined // 2))
    filtered = query.method is not None
    out: list[Doc] = []
    examined = 0
    last: tuple[datetime, str] | None = None
    for found in range_filters(query):
        budget = max_examined - examined
        # Unfiltered, every row is a match: read just one past the page (it says "more follow").
        want = budget if filtered else min(budget, limit + 1 - len(out))
        if want <= 0:
            break
        cursor = collection.find(found, _PROJECTION).sort(NEWEST_FIRST).limit(want)
        cursor = cursor.batch_size(min(want, round_rows) if filtered else want)  # rows per round trip
        read = 0
        try:
            async for doc in cursor:
                read += 1
                last = (doc["created_at"], str(doc["job_id"]))
                if matches(query, doc):
                    out.append(doc)
                    if len(out) > limit:  # one past the page: more follow its last job
                        end = out[limit - 1]
                        return Page(out[:limit], (end["created_at"], str(end["job_id"])))
        finally:
            await cursor.close()
        examined += read
        if read == want:  # this range may hold more rows than were read: the bound stopped the walk
            return Page(out, last)
    return Page(out, None)
