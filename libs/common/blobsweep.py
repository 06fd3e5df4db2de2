"""Orphan upload blobs: photo bytes in the `uploads` bucket that no live job will ever read.

Every path that refuses, cancels or finishes an upload deletes its blob (common.blobs). What
none of them covers is a gateway killed mid-upload (SIGKILL, OOM): it leaves either chunks
without a file document (the stream never finished) or a whole blob whose job document was
never inserted (it died between closing the blob and the insert). The recovery sweeper
(common.recovery) runs this sweep after its own pass, under the same lock and turn.

A blob begun more than BLOB_ORPHAN_AGE_S ago is removed unless a live job (queued, running,
retrying) holds it. Its age is its id's: blob ids are ObjectIds made when the writer starts, so
the grace has to outlast the longest upload stream.

Every query is an index scan (tests/integration/test_query_plans.py):

- candidates: the first chunk of every blob (`n` 0; an empty photo is refused, so every blob
  has one) through `first_chunk`, a partial (n, files_id) index holding one entry per blob:
  SecantusDB plans neither a range on `uploads.files._id` (only `_id` point lookups) nor one
  on `files_id` followed by `n: 0` on `files_id_1_n_1`;
- their file documents, by `_id` (`$in`); none means an unfinished write, an orphan;
- the owning job, by the `job_id` the blob was written for (its filename and `metadata.job_id`,
  common.blobs' writer) through `job_id_rev_unique`: `jobs` needs no index on `blob_id`. A job
  holds the blob when its `blob_id` names it and it is still live; a final job's blob is one
  the worker failed to delete.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from common import blobs, jobs
from common.mongo import JOBS, Doc

log = logging.getLogger(__name__)

BATCH = 500  # blob ids per `$in` lookup
CHUNKS = f"{blobs.BUCKET}.chunks"
FILES = f"{blobs.BUCKET}.files"


@dataclass
class BlobSweepReport:
    """What one orphan-blob sweep found and did."""

    cutoff: datetime
    dry_run: bool
    old: int = 0  # blobs begun before the cutoff
    removed: int = 0  # of those, orphans removed (in a dry run: that would be)


def candidate_filter(cutoff: datetime) -> Doc:
    """The first chunk of every blob begun before `cutoff` (the `first_chunk` index)."""
    return {"n": 0, "files_id": {"$lt": ObjectId.from_datetime(cutoff)}}


def files_filter(ids: Iterable[ObjectId]) -> Doc:
    """The file documents of `ids` (point lookups on `_id`)."""
    return {"_id": {"$in": list(ids)}}


def owners_filter(job_ids: Iterable[str]) -> Doc:
    """The jobs the blobs were written for (the unique `job_id` index)."""
    return {"job_id": {"$in": sorted(set(job_ids))}}


async def sweep(
    db: AsyncDatabase[Doc],
    cutoff: datetime,
    *,
    dry_run: bool = False,
    keep_alive: Callable[[], Awaitable[object]] | None = None,
) -> BlobSweepReport:
    """Remove every blob begun before `cutoff` that no live job holds; `keep_alive` runs per batch."""
    report = BlobSweepReport(cutoff=cutoff, dry_run=dry_run)
    # Ids only, all at once: SecantusDB reads the whole range for every query anyway (a `limit`
    # does not stop it early), so paging would read it once per page.
    found = db[CHUNKS].find(candidate_filter(cutoff), {"_id": 0, "files_id": 1})
    ids = [doc["files_id"] async for doc in found]
    report.old = len(ids)
    store = blobs.BlobStore(db)
    for start in range(0, len(ids), BATCH):
        if keep_alive is not None:
            await keep_alive()
        for oid in await _orphans(db, ids[start : start + BATCH]):
            if dry_run or await store.delete(str(oid)):
                report.removed += 1
    log.log(
        logging.INFO if report.removed else logging.DEBUG,
        "orphan blob sweep removed %d upload blob(s)%s",
        report.removed,
        " (dry run)" if dry_run else "",
        extra={"old": report.old, "cutoff": cutoff.isoformat()},
    )
    return report


async def _orphans(db: AsyncDatabase[Doc], ids: Sequence[ObjectId]) -> list[ObjectId]:
    """The blobs among `ids` no live job holds."""
    files = {
        doc["_id"]: doc async for doc in db[FILES].find(files_filter(ids), {"filename": 1, "metadata": 1})
    }
    owner = {oid: _owner(doc) for oid, doc in files.items()}
    held: dict[str, Doc] = {}
    if any(owner.values()):
        projection = {"_id": 0, "job_id": 1, "status": 1, "blob_id": 1}
        async for doc in db[JOBS].find(owners_filter(j for j in owner.values() if j), projection):
            held[str(doc["job_id"])] = doc
    orphans = []
    for oid in ids:
        if oid not in files:  # chunks without a file document: a write that never finished
            orphans.append(oid)
            continue
        job_id = owner[oid]
        if not job_id:  # no owner recorded: not a blob this code wrote, so not ours to judge
            log.warning("blob %s names no job; left in place", oid)
            continue
        job = held.get(job_id)
        if job is None or job.get("blob_id") != str(oid) or job.get("status") not in jobs.LIVE_STATES:
            orphans.append(oid)
    return orphans


def _owner(doc: Doc) -> str:
    """The job a blob was written for (common.blobs: its `metadata.job_id`, also its filename)."""
    metadata = doc.get("metadata") or {}
    return str(metadata.get("job_id") or doc.get("filename") or "")
