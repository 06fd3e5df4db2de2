"""Job archives: whole UTC days of job documents as zstd-compressed JSON lines, and their restore.

`archive` writes one file per UTC day whose jobs are all older than ARCHIVE_AFTER_DAYS
(`jobs-YYYY-MM-DD.jsonl.zst`), long before the TTL index removes them (settings refuse an age
that would not be), and records each file in the `archives` collection so a day is written once.
A file is written under a temporary name and renamed, so a crash never leaves half an archive
behind a final name; an existing file is never overwritten. Documents are MongoDB Extended JSON
(relaxed), one per line, `_id` included, so a restore gives back the very documents.

Nothing secret is archived: `callback_secret` (the only secret a job document holds, encrypted,
until its webhook is done) is left out of every line.

`restore` upserts each line by `job_id` (replace or insert: running it twice changes nothing). A
restored job whose `expire_at` already passed would be removed again by the next TTL sweep, so it
gets `keep` more time instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import zstandard
from bson import json_util
from bson.json_util import JSONOptions
from pymongo import ASCENDING, IndexModel, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection

from common.mongo import ARCHIVES, Doc, Mongo

# One document per archive file; only `flickrhub archive` uses the collection, and declares it here.
INDEXES: dict[str, list[IndexModel]] = {
    ARCHIVES: [IndexModel([("name", ASCENDING)], unique=True, name="name_unique")]
}

EXCLUDED = ("callback_secret",)
_JSON = JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True, tzinfo=UTC)
_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)
ZSTD_LEVEL = 10


def file_name(day: datetime) -> str:
    """Name of the archive of the UTC day starting at `day`."""
    return f"jobs-{day:%Y-%m-%d}.jsonl.zst"


def day_start(at: datetime) -> datetime:
    """Midnight UTC of the day holding `at`."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


def day_filter(day: datetime) -> Doc:
    """The jobs created during the UTC day starting at `day`."""
    return {"created_at": {"$gte": day, "$lt": day + _DAY}}


def pending_filter(since: datetime, cutoff: datetime) -> Doc:
    """The jobs created from `since` up to (not including) `cutoff`."""
    return {"created_at": {"$gte": since, "$lt": cutoff}}


def name_filter(name: str) -> Doc:
    """The `archives` record of one file."""
    return {"name": name}


def restore_filter(job_id: str) -> Doc:
    """What a restored line replaces: the job with its id."""
    return {"job_id": job_id}


@dataclass
class ArchiveReport:
    """What one `archive` run did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already archived (or a file already there)
    jobs: int = 0


@dataclass
class RestoreReport:
    """What one `restore` did."""

    jobs: int = 0
    inserted: int = 0
    replaced: int = 0
    retention_extended: int = 0


def encode_line(doc: Doc) -> bytes:
    """One job as an archive line (JSON with MongoDB types kept, no secrets), newline included."""
    kept = {k: v for k, v in doc.items() if k not in EXCLUDED}
    return (json_util.dumps(kept, json_options=_JSON) + "\n").encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def _write_day(jobs: AsyncCollection[Doc], day: datetime, path: Path) -> int:
    """Write the day's jobs to `path` (via a temporary file); how many were written."""
    tmp = path.with_name(path.name + ".part")
    count = 0
    with tmp.open("wb") as fh, zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(fh) as writer:
        batch: list[bytes] = []
        projection = {name: 0 for name in EXCLUDED}
        async for doc in jobs.find(day_filter(day), projection).sort("created_at", 1):
            batch.append(encode_line(doc))
            if len(batch) >= _BATCH:
                await asyncio.to_thread(writer.write, b"".join(batch))  # compression off the event loop
                count += len(batch)
                batch.clear()
        if batch:
            await asyncio.to_thread(writer.write, b"".join(batch))
            count += len(batch)
    os.replace(tmp, path)
    return count


async def archive(
    mongo: Mongo, directory: Path, older_than: timedelta, *, now: datetime | None = None
) -> ArchiveReport:
    """Archive every UTC day that ended at least `older_than` ago and is not archived yet."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    cutoff = day_start((now or datetime.now(UTC)) - older_than)
    report = ArchiveReport()
    since = _EPOCH
    while True:
        first = await mongo.jobs.find_one(
            pending_filter(since, cutoff), {"_id": 0, "created_at": 1}, sort=[("created_at", 1)]
        )
        if first is None:
            return report
        day = day_start(first["created_at"])
        since = day + _DAY
        name = file_name(day)
        path = directory / name
        if await mongo.archives.find_one(name_filter(name)) is not None or await asyncio.to_thread(
            path.exists
        ):
            report.skipped.append(name)
            continue
        count = await _write_day(mongo.jobs, day, path)
        record = {
            "name": name,
            "day": day,
            "jobs": count,
            "bytes": (await asyncio.to_thread(path.stat)).st_size,
            "sha256": await asyncio.to_thread(_sha256, path),
            "archived_at": datetime.now(UTC),
        }
        await mongo.archives.update_one(name_filter(name), {"$set": record}, upsert=True)
        report.written.append(name)
        report.jobs += count


def _lines(fh: IO[bytes]) -> Iterator[str]:
    reader = zstandard.ZstdDecompressor().stream_reader(fh)
    yield from io.TextIOWrapper(reader, encoding="utf-8")


def _read_batch(lines: Iterator[str], size: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line.strip():
            out.append(line)
            if len(out) >= size:
                break
    return out


def _parse(line: str, number: int) -> Doc:
    try:
        doc = json_util.loads(line, json_options=_JSON)
    except ValueError as exc:
        raise ValueError(f"line {number}: not a JSON document: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("job_id"), str):
        raise ValueError(f"line {number}: not a job document (no job_id)")
    return doc


async def restore(
    jobs: AsyncCollection[Doc], path: Path, *, keep: timedelta, now: datetime | None = None
) -> RestoreReport:
    """Upsert every job of an archive by job_id; ValueError names a malformed line."""
    report = RestoreReport()
    floor = (now or datetime.now(UTC)) + timedelta(hours=1)
    number = 0
    with path.open("rb") as fh:
        lines = _lines(fh)
        while batch := await asyncio.to_thread(_read_batch, lines, _BATCH):
            ops: list[ReplaceOne[Doc]] = []
            for line in batch:
                number += 1
                doc = _parse(line, number)
                expire_at: Any = doc.get("expire_at")
                if isinstance(expire_at, datetime) and expire_at < floor:
                    doc["expire_at"] = floor - timedelta(hours=1) + keep
                    report.retention_extended += 1
                ops.append(ReplaceOne(restore_filter(doc["job_id"]), doc, upsert=True))
            result = await jobs.bulk_write(ops, ordered=False)
            report.jobs += len(ops)
            report.inserted += result.upserted_count
            report.replaced += result.matched_count
    return report
