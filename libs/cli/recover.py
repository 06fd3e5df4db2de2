"""`flickrhub recover [--dry-run] [--min-age S]`: one recovery sweep, against MongoDB and Redis directly.

Re-enqueues the live jobs MongoDB holds that the queue Redis no longer does (see common.recovery):
a full sweep when Redis lost its marker (everything it held is gone), else the jobs left alone
for at least `--min-age` seconds (default RECOVERY_MIN_AGE_S); then it removes the upload blobs
older than BLOB_ORPHAN_AGE_S that no live job holds (common.blobsweep). `--dry-run` lists the jobs,
counts the blobs and changes nothing. Safe beside running movers: one sweep runs at a time, and a
duplicate entry is a no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from typing import TextIO

from common import redisio
from common.mongo import Mongo
from common.recovery import Sweeper, SweepReport
from common.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `recover` command."""
    recover = commands.add_parser(
        "recover",
        help="re-enqueue live jobs the queue Redis lost and remove orphan upload blobs "
        "(talks to MongoDB and Redis directly)",
    )
    recover.add_argument(
        "--dry-run", action="store_true", help="list what would be re-enqueued; change nothing"
    )
    recover.add_argument(
        "--min-age",
        type=float,
        default=None,
        help="seconds a job must have been left alone (default RECOVERY_MIN_AGE_S; ignored by a full sweep)",
    )


def run(settings: Settings, dry_run: bool, min_age_s: float | None, out: TextIO) -> None:
    """Sweep once and print every job re-enqueued (raises SweepBusy, RedisError, PyMongoError)."""
    report = asyncio.run(_sweep(settings, dry_run, min_age_s))
    rows = [("JOB_ID", "STATE", "METHOD", "TOKEN", "TO")]
    rows += [(r.job_id, r.status, r.method, r.token[:12], r.where) for r in report.recovered]
    if report.recovered:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(_summary(report), file=out)


async def _sweep(settings: Settings, dry_run: bool, min_age_s: float | None) -> SweepReport:
    redis = redisio.client(settings.redis_url)
    mongo = Mongo.from_settings(settings)
    try:
        sweeper = Sweeper(settings, redis, mongo.jobs, f"cli-{socket.gethostname()}-{os.getpid()}")
        full = not await sweeper.marker_present()
        return await sweeper.sweep(full=full, min_age_s=min_age_s, dry_run=dry_run)
    finally:
        await mongo.close()
        await redis.aclose()


def _summary(report: SweepReport) -> str:
    verb = "would re-enqueue" if report.dry_run else "re-enqueued"
    kind = (
        "full sweep: the queue Redis had lost its marker"
        if report.full
        else f"jobs left alone since {report.cutoff.isoformat(timespec='seconds')}"
    )
    return (
        f"{verb} {len(report.recovered)} job(s) ({kind}); {report.candidates} candidate(s), "
        f"{report.held} still in Redis, {report.moved_on} changed meanwhile, {report.unusable} unusable; "
        f"{'would remove' if report.dry_run else 'removed'} {report.orphan_blobs} orphan upload blob(s)"
    )
