"""Recovery from MongoDB: re-enqueue live jobs whose entries the queue Redis no longer holds.

The job document in MongoDB is the source of truth; Redis only holds the job's way forward:
one entry in a token queue, in the delayed set (a retry or a deferral) or in a work stream.
When Redis loses entries, all of them (FLUSHALL, a restart without persistence) or a few (a
crash inside AOF's one-second window), the sweeper finds the jobs MongoDB says are live and
rebuilds their entries.

When it sweeps:

- Marker. `keys.QUEUE_MARKER` is written when a full sweep ends; whatever wipes the queue
  Redis wipes it too. Every mover checks it (one EXISTS every RECOVERY_CHECK_S); when it is
  gone, a full sweep starts at once: every queued or retrying job last written before that
  moment and every running job whose lease has run out. A sweeper killed mid-way leaves the
  marker unset and the next one starts over. On a new deployment the first sweep finds nothing.
- Periodic. Every RECOVERY_INTERVAL_S one replica (the one that sets `keys.RECOVERY_TURN`)
  sweeps jobs untouched for RECOVERY_MIN_AGE_S and running jobs whose lease ran out that long
  ago: the partial losses the marker cannot see.
- `flickrhub recover [--dry-run]` runs one sweep (a full one when the marker is gone).

Each sweep ends with the orphan-blob sweep (common.blobsweep): upload blobs older than
BLOB_ORPHAN_AGE_S that no live job holds, left by a gateway killed mid-upload, are removed.

One process sweeps at a time (`keys.recovery_lock()`, a lease with a TTL released at the end).

How it knows Redis "no longer holds" a job: age alone proves nothing (with a spent Flickr budget
a job may wait in its token queue for hours), so a candidate is re-enqueued only when no entry
names it in any place an entry can be, read in the order entries flow: the delayed set, the
token's priority streams, the work streams (pending or not), so an entry that moves on during
the scan is met again downstream. Then each candidate is read again and kept only at the same
revision and state. Entries leave Redis only after the job's revision moved: the retry pump and
the mover append before they delete, a worker acknowledges only after its claim bumped the
revision. "In no place, at the same revision" therefore means lost. The scan costs one read of
every entry held, and runs only when there are candidates.

What it re-enqueues: the gateway's entry, rebuilt from the document (`JobEntry.from_doc`) and
queued the gateway's way (`tokenqueue.enqueue`: the priority stream, the active-token set the
mover reads, the token's client), with the revision the worker's compare-and-set claim expects:

- queued: the document's revision and attempt count, so the claim is the usual single write;
- retrying: the same (the lost delayed entry carried the revision `schedule_retry` left), into the
  delayed set while `next_attempt_at` is ahead, so the backoff still holds;
- running, lease long run out: the entry its dead run consumed, one revision and one attempt
  behind the document. Its fast claim fails, the worker reads the job, finds the run abandoned
  and takes it over as after a crash: a read runs again, a write is never resent blindly (a
  Flickr read reconciles it where one can, worker.reconcile; else it ends WRITE_OUTCOME_UNKNOWN).
  The current revision would let the compare-and-set succeed without the lease check and resend
  a write.

Duplicates stay harmless. Two entries at one revision: one claim wins; the other finds the job
final and is acknowledged as a no-op (executor._not_claimed), or running under a live lease, and
stays pending until the job is final. Uploads and replaces recover like any job: their entry
carries `blob_id`, and the photo bytes stay in GridFS until the job is final.

The recovered ids are also put back into the admission counts (common.admission) a wipe emptied,
in the same pipeline before their entries, so the worker that finishes a job releases its id.

Not rebuilt: webhook deliveries queued in Redis, idempotency reservations, the dead-letter
stream, rate-limit, budget and breaker state (each starts afresh), and the admission ids of
jobs that were running under a live lease during a wipe (they finish and release nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from common import blobsweep, jobs, keys, redisio, telemetry, tokenqueue
from common.jobs import JobEntry
from common.jobstore import now
from common.mongo import Doc
from common.settings import Settings

log = logging.getLogger(__name__)

SCAN_PAGE = 1000  # entries per XRANGE / ZSCAN page
PIPELINE_STREAMS = 200  # streams read per pipelined round
RECHECK_BATCH = 500  # job ids per re-read ({"job_id": {"$in": …}} uses the unique index)
LOCK_S = 60  # the lock's lease, renewed as the sweep goes on and released when it ends

# Live states, one query each: exactly the fields of one index (status_updated). A running job is a
# candidate once its lease ran out before the cutoff; its lease was set at its claim (updated_at) and
# only ever extended, so those are among the running jobs claimed before the cutoff, and the lease
# is checked on what the query finds (`_left_alone`), sparing `jobs` a (status, lease_until) index.
_LIVE = (jobs.QUEUED, jobs.RETRYING, jobs.RUNNING)
_PROJECTION = {"_id": 0, "job_id": 1, "rev": 1, "status": 1, "token_id_hash": 1, "lease_until": 1}

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class SweepBusy(Exception):
    """Another process holds the recovery lock."""


@dataclass(frozen=True)
class Recovered:
    """One job put back into Redis (or, in a dry run, that would be)."""

    job_id: str
    status: str
    method: str
    token: str
    where: str  # "queue" or "delayed"


@dataclass
class SweepReport:
    """What one sweep found and did."""

    full: bool
    dry_run: bool
    cutoff: datetime
    candidates: int = 0  # live jobs old enough to look at
    held: int = 0  # of those, still held by Redis
    moved_on: int = 0  # of those, changed while the sweep looked (someone holds them)
    unusable: int = 0  # documents no entry can be built from (logged)
    recovered: list[Recovered] = field(default_factory=list)
    orphan_blobs: int = 0  # upload blobs no live job held, removed (common.blobsweep)
    seconds: float = 0.0

    def by_status(self) -> dict[str, int]:
        """Re-enqueued jobs per state."""
        return dict(Counter(r.status for r in self.recovered))


def lost_entry(doc: Doc, trace_fields: dict[str, str]) -> tuple[JobEntry, int | None]:
    """The entry whose loss left the job in its state, and when it is due (ms; None = now). Pure.

    Raises ValueError when the document cannot make an entry.
    """
    rev, attempts, status = int(doc.get("rev", 0)), int(doc.get("attempts", 0)), doc["status"]
    if status == jobs.RUNNING:
        # The entry its run consumed: a stale revision sends the worker down its takeover path.
        return JobEntry.from_doc(doc, attempt=max(0, attempts - 1), rev=rev - 1, trace=trace_fields), None
    entry = JobEntry.from_doc(doc, attempt=attempts, rev=rev, trace=trace_fields)
    due = doc.get("next_attempt_at")
    if status == jobs.RETRYING and isinstance(due, datetime) and due > now():
        return entry, int(due.timestamp() * 1000)
    return entry, None


class Sweeper:
    """Finds live jobs Redis lost and re-enqueues them; one process at a time sweeps."""

    def __init__(
        self, settings: Settings, redis: redisio.Redis, jobs_collection: AsyncCollection[Doc], holder: str
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._jobs = jobs_collection
        self.holder = holder
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """End run() after the current step."""
        self._stopping.set()

    async def run(self, on_sweep: Callable[[SweepReport], None] | None = None) -> None:
        """Check the marker every RECOVERY_CHECK_S; sweep when it is gone or when this replica is due."""
        while not self._stopping.is_set():
            try:
                report = await self.tick()
            except (RedisError, PyMongoError) as exc:
                log.warning("recovery sweep failed: %s", type(exc).__name__)
                report = None
            if report is not None and on_sweep is not None:
                on_sweep(report)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._settings.recovery_check_s)

    async def marker_present(self) -> bool:
        """False when the queue Redis lost its data since the last full sweep (or never had one)."""
        return bool(await self._redis.exists(keys.QUEUE_MARKER))

    async def tick(self) -> SweepReport | None:
        """A full sweep if the marker is gone, a periodic one if it is this replica's turn, else None."""
        full = not await self.marker_present()
        interval = self._settings.recovery_interval_s
        if not full:
            if interval <= 0:
                return None
            if not await self._redis.set(keys.RECOVERY_TURN, self.holder, nx=True, px=int(interval * 1000)):
                return None
        try:
            return await self.sweep(full=full)
        except SweepBusy:
            return None

    async def sweep(
        self, *, full: bool, min_age_s: float | None = None, dry_run: bool = False
    ) -> SweepReport:
        """One sweep under the recovery lock; a full one looks at every live job, however recent.

        Raises SweepBusy when another process is sweeping.
        """
        lock = keys.recovery_lock()
        if not await self._redis.set(lock, self.holder, nx=True, px=LOCK_S * 1000):
            holder = await self._redis.get(lock)
            raise SweepBusy(f"a recovery sweep is already running (held by {holder!s})")
        started = time.perf_counter()
        try:
            age = 0.0 if full else self._settings.recovery_min_age_s if min_age_s is None else min_age_s
            report = SweepReport(full=full, dry_run=dry_run, cutoff=now() - timedelta(seconds=age))
            await self._sweep(report)
            if full and not dry_run:
                await self._mark_whole()
            # Same lock and turn: one replica at a time, every RECOVERY_INTERVAL_S.
            blob_cutoff = now() - timedelta(seconds=self._settings.blob_orphan_age_s)
            swept = await blobsweep.sweep(
                self._jobs.database, blob_cutoff, dry_run=dry_run, keep_alive=self._keep_lock
            )
            report.orphan_blobs = swept.removed
        finally:
            await self._release(keys=[lock], args=[self.holder])
        report.seconds = time.perf_counter() - started
        level = logging.INFO if report.recovered or full else logging.DEBUG
        log.log(
            level,
            "recovery sweep re-enqueued %d job(s)%s",
            len(report.recovered),
            " (dry run)" if dry_run else "",
            extra={
                "full": full,
                "candidates": report.candidates,
                "held": report.held,
                "moved_on": report.moved_on,
                "by_status": report.by_status(),
                "seconds": round(report.seconds, 3),
            },
        )
        return report

    async def _mark_whole(self) -> None:
        """Queue state is whole again: set the marker, and start the periodic turn afresh."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.QUEUE_MARKER, f"{self.holder} {now().isoformat()}")
        if self._settings.recovery_interval_s > 0:
            pipe.set(keys.RECOVERY_TURN, self.holder, px=int(self._settings.recovery_interval_s * 1000))
        await pipe.execute()

    async def _sweep(self, report: SweepReport) -> None:
        candidates: dict[str, Doc] = {}
        for query in candidate_filters(report.cutoff):
            async for doc in self._jobs.find(query, _PROJECTION):
                if not _left_alone(doc, report.cutoff):
                    continue
                candidates[str(doc["job_id"])] = doc
                if len(candidates) % RECHECK_BATCH == 0:
                    await self._keep_lock()
        report.candidates = len(candidates)
        if not candidates:
            return
        held = await self._held({str(d.get("token_id_hash", "")) for d in candidates.values()})
        lost = [d for job_id, d in candidates.items() if job_id not in held]
        report.held = len(candidates) - len(lost)
        for start in range(0, len(lost), RECHECK_BATCH):
            await self._keep_lock()
            await self._recover(lost[start : start + RECHECK_BATCH], report)

    async def _keep_lock(self) -> None:
        """Renew the lock's lease while the sweep makes progress (a dead sweeper's lapses in LOCK_S)."""
        await self._renew(keys=[keys.recovery_lock()], args=[self.holder, LOCK_S * 1000])

    async def _recover(self, seen: Sequence[Doc], report: SweepReport) -> None:
        """Re-read `seen`, keep what is unchanged, and re-enqueue it (unless a dry run)."""
        ids = [str(d["job_id"]) for d in seen]
        current = {str(d["job_id"]): d async for d in self._jobs.find(recheck_filter(ids), {"_id": 0})}
        items: list[tuple[JobEntry, int | None]] = []
        for before in seen:
            doc = current.get(str(before["job_id"]))
            if doc is None or not _unchanged(before, doc, report.cutoff):
                report.moved_on += 1
                continue
            try:
                entry, due_ms = lost_entry(doc, _recovery_trace(doc))
                _check_queues(entry)
            except ValueError as exc:
                report.unusable += 1
                log.error("job %s cannot be re-enqueued: %s", doc.get("job_id"), exc)
                continue
            items.append((entry, due_ms))
            where = "queue" if due_ms is None else "delayed"
            report.recovered.append(
                Recovered(entry.job_id, str(doc["status"]), entry.method, entry.token, where)
            )
            log.debug(
                "re-enqueuing job", extra={"job_id": entry.job_id, "status": doc["status"], "where": where}
            )
        if items and not report.dry_run:
            await self._enqueue(items)

    async def _enqueue(self, items: Iterable[tuple[JobEntry, int | None]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for entry, due_ms in items:
            # Counted open again before the entry exists: the worker that finishes it releases the id.
            accepted = {entry.job_id: entry.enqueued_ms or int(time.time() * 1000)}
            if entry.client_id:
                pipe.zadd(keys.client_open_jobs(entry.client_id), accepted, nx=True)
            pipe.zadd(keys.OPEN_JOBS, accepted, nx=True)
            if due_ms is None:
                tokenqueue.enqueue(pipe, entry)
            else:
                pipe.zadd(keys.DELAYED, {json.dumps(entry.to_fields(), sort_keys=True): due_ms})
        await pipe.execute()

    async def _held(self, tokens: set[str]) -> set[str]:
        """Ids of the jobs some entry names, read in the order entries flow (see the module docstring)."""
        held: set[str] = set()
        async for member, _score in self._redis.zscan_iter(keys.DELAYED, count=SCAN_PAGE):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                held.add(str(json.loads(member).get("job_id", "")))
        held |= await self._stream_jobs([s for t in sorted(tokens) if t for s in keys.token_streams(t)])
        held |= await self._stream_jobs([keys.work_stream(t) for t in keys.TARGETS])
        return held

    async def _stream_jobs(self, streams: Sequence[str]) -> set[str]:
        """Job ids of every entry in `streams`, a page per stream per pipelined round."""
        found: set[str] = set()
        for start in range(0, len(streams), PIPELINE_STREAMS):
            after = dict.fromkeys(streams[start : start + PIPELINE_STREAMS], "-")
            while after:
                pipe = self._redis.pipeline(transaction=False)
                names = list(after)
                for name in names:
                    pipe.xrange(name, min=after[name], max="+", count=SCAN_PAGE)
                pages: list[Any] = await pipe.execute()
                after = {}
                for name, page in zip(names, pages, strict=True):
                    found.update(str(fields.get("job_id", "")) for _id, fields in page)
                    if len(page) == SCAN_PAGE:
                        after[name] = f"({page[-1][0]}"
        return found


def candidate_filters(cutoff: datetime) -> list[Doc]:
    """The candidate queries: live jobs last written before `cutoff`, one query per state.

    Running ones are candidates only when `_left_alone` also holds (their lease ran out too).
    """
    return [{"status": status, "updated_at": {"$lt": cutoff}} for status in _LIVE]


def _left_alone(doc: Doc, cutoff: datetime) -> bool:
    """A found job is left alone since before `cutoff`: a running one's lease ran out before it too."""
    if doc.get("status") != jobs.RUNNING:
        return True
    lease = doc.get("lease_until")
    return isinstance(lease, datetime) and lease < cutoff


def recheck_filter(job_ids: Sequence[str]) -> Doc:
    """The query that reads candidates again by id."""
    return {"job_id": {"$in": list(job_ids)}}


def _check_queues(entry: JobEntry) -> None:
    """Raise ValueError when the entry names a priority or target no queue exists for."""
    keys.token_stream(entry.token, entry.priority)
    keys.work_stream(entry.target)


def _unchanged(before: Doc, doc: Doc, cutoff: datetime) -> bool:
    """Still the state the candidate query saw (a running job's lease may have been extended)."""
    if doc.get("rev") != before.get("rev") or doc.get("status") != before.get("status"):
        return False
    return _left_alone(doc, cutoff)


def _recovery_trace(doc: Doc) -> dict[str, str]:
    """Trace context for the rebuilt entry: a recover span inside the job's own trace when it has one."""
    trace_id = str(doc.get("trace_id") or "")
    parent = None
    if len(trace_id) == 32 and trace_id.strip("0"):
        # The job's trace id with a span id of our own: the rest of the job joins its first trace.
        parent = telemetry.extract_fields({"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    with telemetry.tracer().start_as_current_span(
        telemetry.SPAN_RECOVER, context=parent, kind=trace.SpanKind.PRODUCER
    ) as span:
        span.set_attribute(telemetry.ATTR_JOB_ID, str(doc.get("job_id", "")))
        span.set_attribute(telemetry.ATTR_STATE, str(doc.get("status", "")))
        return dict(telemetry.inject_fields({}))
