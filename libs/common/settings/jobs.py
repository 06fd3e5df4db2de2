"""Jobs over their life: maximum age, the hot state, retention, archival and recovery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings


@dataclass(frozen=True)
class JobSettings:
    """How long jobs live where (see docs/archive.md)."""

    job_max_age_s: float = setting("JOB_MAX_AGE_S", 86400.0, "A job not started within this age expires.")
    job_retention_days: float = setting(
        "JOB_RETENTION_DAYS",
        90.0,
        "Days a completed, failed or cancelled job stays in MongoDB after it ended (the TTL index on "
        "`expire_at` then removes it).",
        positive=True,
    )
    job_expired_retention_days: float = setting(
        "JOB_EXPIRED_RETENTION_DAYS",
        30.0,
        "Days an expired job stays in MongoDB after it expired.",
        positive=True,
    )
    job_hot_ttl_s: int = setting(
        "JOB_HOT_TTL_S",
        86400,
        "Seconds a job's hot state stays in the queue Redis, where status reads find it before MongoDB "
        "(0 turns hot state off: every status read goes to MongoDB).",
        at_least=0,
    )
    job_hot_max_result_bytes: int = setting(
        "JOB_HOT_MAX_RESULT_BYTES",
        16384,
        "Largest result (JSON bytes) kept in a job's hot state; a job with a larger one is read from "
        "MongoDB.",
        at_least=0,
    )

    # Archival (see cli.archiver and docs/archive.md)
    archive_dir: str = setting(
        "ARCHIVE_DIR",
        ".data/archive",
        "Directory `flickrhub archive` writes zstd JSON-lines job archives to (one file per UTC day).",
    )
    archive_after_days: float = setting(
        "ARCHIVE_AFTER_DAYS",
        7.0,
        "`flickrhub archive` exports the jobs of every UTC day that ended at least this many days ago; "
        "must stay below both retention periods (a job must be archived before the TTL removes it).",
    )

    # Recovery from MongoDB (see common.recovery)
    recovery_interval_s: float = setting(
        "RECOVERY_INTERVAL_S",
        300.0,
        "How often one mover replica sweeps MongoDB for live jobs Redis no longer holds and re-enqueues "
        "them (0 = never; the marker check and `flickrhub recover` still work).",
        at_least=0,
    )
    recovery_min_age_s: float = setting(
        "RECOVERY_MIN_AGE_S",
        600.0,
        "The periodic sweep looks at queued or retrying jobs untouched this long and running jobs whose "
        "lease ran out this long ago (a full sweep after Redis lost its data looks at every one).",
        positive=True,
    )
    recovery_check_s: float = setting(
        "RECOVERY_CHECK_S",
        5.0,
        "How often each mover looks for the queue Redis's marker; when it is gone (FLUSHALL, a restart "
        "without persistence) a full sweep starts at once.",
        positive=True,
    )
    blob_orphan_age_s: float = setting(
        "BLOB_ORPHAN_AGE_S",
        3600.0,
        "Each recovery sweep removes upload blobs begun this long ago that no live job holds (left by a "
        "gateway killed mid-upload); must outlast the longest upload stream.",
        positive=True,
    )


def check_jobs(s: Settings) -> None:
    """Jobs are archived before the TTL removes them."""
    # Archives hold whole UTC days: the last job of a day is archived up to one day after the age.
    if not 0 <= s.archive_after_days < min(s.job_retention_days, s.job_expired_retention_days) - 1:
        raise SettingsError(
            "ARCHIVE_AFTER_DAYS: must be at least 0 and more than one day below JOB_RETENTION_DAYS "
            "and JOB_EXPIRED_RETENTION_DAYS (jobs are archived before the TTL removes them)"
        )
