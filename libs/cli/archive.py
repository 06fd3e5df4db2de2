"""`flickrhub archive` and `flickrhub restore FILE`: job archives, against MongoDB directly.

    flickrhub archive [--dir D] [--older-than-days N]   export whole UTC days of old jobs (cli.archiver)
    flickrhub restore FILE [--keep-days N]              upsert an archive's jobs back by job_id

Archiving writes one zstd JSON-lines file per day into ARCHIVE_DIR (default) and records it,
so running it again (from cron or a Kubernetes CronJob) writes only the new days. Restoring is
idempotent. See docs/archive.md.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from cli import archiver as archive
from common.mongo import Mongo
from common.settings import Settings

DEFAULT_KEEP_DAYS = 7.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `archive` and `restore` commands."""
    export = commands.add_parser("archive", help="export old jobs to zstd JSON-lines files, one per UTC day")
    export.add_argument("--dir", default="", help="archive directory (default: ARCHIVE_DIR)")
    export.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="archive the days that ended at least this long ago (default: ARCHIVE_AFTER_DAYS)",
    )
    back = commands.add_parser("restore", help="bring an archive's jobs back into MongoDB (upsert by job_id)")
    back.add_argument("file", help="a jobs-YYYY-MM-DD.jsonl.zst file written by `flickrhub archive`")
    back.add_argument(
        "--keep-days",
        type=float,
        default=DEFAULT_KEEP_DAYS,
        help="jobs whose retention already ran out are kept this many more days (default: 7)",
    )


def run_archive(settings: Settings, directory: str, older_than_days: float | None, out: TextIO) -> None:
    """Archive and print what was written (raises PyMongoError, OSError)."""
    days = settings.archive_after_days if older_than_days is None else older_than_days
    target = Path(directory or settings.archive_dir)
    report = asyncio.run(_archive(settings, target, timedelta(days=days)))
    for name in report.written:
        print(f"wrote {target / name}", file=out)
    print(
        f"{len(report.written)} file(s) written with {report.jobs} job(s); "
        f"{len(report.skipped)} day(s) already archived",
        file=out,
    )


def run_restore(settings: Settings, file: str, keep_days: float, out: TextIO) -> None:
    """Restore one archive and print the counts (raises ValueError, PyMongoError, OSError, ZstdError)."""
    report = asyncio.run(_restore(settings, Path(file), timedelta(days=keep_days)))
    print(
        f"restored {report.jobs} job(s) from {file}: {report.inserted} inserted, {report.replaced} "
        f"replaced, {report.retention_extended} kept {keep_days:g} more day(s)",
        file=out,
    )


async def _archive(settings: Settings, directory: Path, older_than: timedelta) -> archive.ArchiveReport:
    mongo = Mongo.from_settings(settings)
    try:
        await mongo.ensure_indexes(archive.INDEXES)
        return await archive.archive(mongo, directory, older_than)
    finally:
        await mongo.close()


async def _restore(settings: Settings, path: Path, keep: timedelta) -> archive.RestoreReport:
    mongo = Mongo.from_settings(settings)
    try:
        await mongo.ensure_indexes(archive.INDEXES)
        return await archive.restore(mongo.jobs, path, keep=keep)
    finally:
        await mongo.close()
