"""Executing one job entry: claim in MongoDB, cache, Flickr, record, then acknowledge.

The entry is acknowledged only after the outcome is recorded, so a worker that
dies at any point leaves the entry pending for another worker to claim; the
guarded claim in MongoDB makes a redelivered entry of a finished job a no-op, and a claim that
takes over a dead worker's write never sends it blindly: a Flickr read settles it where one can
(worker.reconcile: completed if applied, sent if certainly absent), else it ends
WRITE_OUTCOME_UNKNOWN. The
`failpoints.hit` lines are where chaos tests kill the worker (FAILPOINTS; no-ops otherwise).

The job state machine as the worker drives it. Every arrow is a compare-and-set on
(job_id, rev) in common.jobstore; docs/architecture.md draws the same machine (keep them in
agreement):

    an entry arrives (Executor.execute)
      malformed                          ack, to fh:dlq (no job to record it on)
      a first attempt older than JOB_MAX_AGE_S
        queued -> expired                `_expire` (a queued job only: a retrying one has started)
      Flickr paused (its breaker open)   entry back to fh:delayed, ack; no attempt spent (`_defer`)
      queued | retrying -> running       `_claim` (JobStore.claim)
      running -> running                 `_claim`, the run's lease ran out: taken over
        a taken-over write               one Flickr read decides (`_settle_takeover`, worker.reconcile)
          applied     -> completed       {"stat": "ok", "reconciled": true}; not sent again
          absent                         the run below sends it
          unknown     -> failed          WRITE_OUTCOME_UNKNOWN (also every write no read proves)
      not claimed (`_not_claimed`)       unknown job: ack; final: ack as a duplicate (queue the
                                         webhook the record lacks); running elsewhere: leave pending
    the run ends (`_record`)
      Flickr ok, or a cache hit          running -> completed
      retryable, attempts left           running -> retrying (ZADD fh:delayed first; due, the mover
                                         pumps it back into its token queue and a worker claims it)
      retryable, attempts exhausted      running -> failed ATTEMPTS_EXHAUSTED, and to fh:dlq
      a write that got no answer         running -> failed WRITE_OUTCOME_UNKNOWN (never retried)
      permanent error                    running -> failed
      the job is not ours any more       nothing recorded; the entry stays pending
    CancelJob (gateway)                  queued | retrying -> cancelled; running is refused

The write path, in order, with its failpoints: claim [worker.claimed]; the RUNNING hint (or the
claim's hot copy waits for the outcome); the run, under the heartbeat (lease) and a deadline
[worker.answered]; the outcome in MongoDB; for a final outcome [worker.recorded], then one Redis
pipeline with its hot copy, hint and webhook, admission release and acknowledgement (`_after`)
[worker.announced]; an upload's bytes deleted; its own acknowledgement for a retry or an upload
[worker.acked]. A retry is announced ([worker.recorded] before, [worker.announced] after) and
acknowledged after its own write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from pymongo.errors import ConnectionFailure, PyMongoError
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import failpoints, flickr_errors, jobs, keys, redisio, resp, telemetry
from common.admission import Admission, release_on
from common.announce import announce, announce_on
from common.blobs import BlobStore
from common.flickr_errors import Failure
from common.flickr_guard import FlickrGuard
from common.flickr_methods import is_write
from common.groupcommit import Batcher
from common.jobstore import Claim, JobStore, now
from common.logs import job_id_var
from common.settings import Settings
from common.tokens import TokenStore
from worker import backoff, metrics, reconcile
from worker.cache_client import CacheClient
from worker.flickr import FlickrClient, Success
from worker.uploads import Uploader

log = logging.getLogger(__name__)

# What `_record` did: the job was not ours any more; recorded (the entry still to acknowledge);
# recorded and acknowledged in the same round trip.
NOT_OWNED, RECORDED, SETTLED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Settle:
    """A final outcome's tag (common.jobstore): what `_after` queues once its write won."""

    entry: jobs.JobEntry
    state: str
    stream: str
    entry_id: str
    ack: bool


class Executor:
    """Runs entries of the work streams for one worker process."""

    def __init__(
        self,
        settings: Settings,
        redis: redisio.Redis,
        store: JobStore,
        tokens: TokenStore,
        flickr: FlickrClient,
        cache: CacheClient,
        worker_id: str,
        wire: resp.Multiplexed | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._wire = wire  # the per-turn pipelines go over it when given (common.resp)
        self._store = store
        self._tokens = tokens
        self._flickr = flickr
        self._cache = cache
        self.worker_id = worker_id
        self._lease_s = settings.worker_visibility_timeout_s * 0.8
        self._guard = FlickrGuard(redis, settings)
        # A final job stops counting against its client's backpressure cap (common.admission).
        self._admission = Admission.from_settings(redis, settings, wire)
        # A turn's outcomes are announced, released and acknowledged with their hot copies (_after).
        store.after = self._after
        self._blobs = BlobStore(store.jobs.database)
        self._uploads = Uploader(
            flickr, self._blobs, settings.upload_ticket_timeout_s, settings.flickr_timeout_s
        )
        # Empty unless a chaos test arms FAILPOINTS: each `hit` below is then one dict lookup.
        self._failpoints = failpoints.Failpoints.from_config(settings.failpoints)
        # Entries arrive in batches (one XREADGROUP): their Redis steps share round trips per turn.
        self._announces: Batcher[tuple[str, str, bool], None] = Batcher(self._announce_all)
        self._acks: Batcher[tuple[str, str, jobs.JobEntry | None], None] = Batcher(self._ack_all)
        # Runs whose leases the one heartbeat task keeps fresh: (stream, entry id) -> (job id, rev, since).
        self._running: dict[tuple[str, str], tuple[str, int, float]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def execute(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        """Run one entry through the job state machine (module doc) to a recorded outcome and
        acknowledge it, or leave it pending for the worker that holds its job."""
        try:
            entry = jobs.JobEntry.from_fields(fields)
        except ValueError as exc:
            await self._reject(stream, entry_id, fields, exc)
            return
        job_id_var.set(entry.job_id)
        parent = telemetry.extract_fields(entry.trace)
        with telemetry.span(telemetry.SPAN_EXECUTE, context=parent, kind=trace.SpanKind.CONSUMER) as span:
            _describe(span, entry, entry_id)
            claim = await self._claim(stream, entry_id, entry)
            if claim is None:
                return  # expired, deferred, or not this worker's to run
            if claim.taken_over and _is_write(entry):
                # Its worker died mid-call: the write may have reached Flickr. Never resend it blindly.
                settled = await self._settle_takeover(stream, entry_id, entry, claim.rev)
                if settled:
                    return  # completed from Flickr's read, or failed WRITE_OUTCOME_UNKNOWN
            self._failpoints.hit(failpoints.WORKER_CLAIMED)
            if not claim.tagged:
                await self._announce(entry.job_id, jobs.RUNNING, has_callback=False)
            outcome, from_cache = await self._run_leased(stream, entry_id, entry, claim.rev)
            self._failpoints.hit(failpoints.WORKER_ANSWERED)
            span.set_attribute(telemetry.ATTR_FROM_CACHE, from_cache)
            recorded = await self._record_kept(stream, entry_id, entry, claim.rev, outcome, from_cache)
            if recorded == RECORDED:
                await self._ack(stream, entry_id, entry)  # a retry, or an upload once its bytes went
            if recorded != NOT_OWNED:
                self._failpoints.hit(failpoints.WORKER_ACKED)

    async def _reject(self, stream: str, entry_id: str, fields: dict[str, str], exc: ValueError) -> None:
        """A malformed entry: to the dead letters and acknowledged (there is no job to record it on)."""
        log.error("malformed work entry %s: %s", entry_id, exc)
        await self._dead_letter(stream, entry_id, fields, "malformed", str(exc))
        await self._ack(stream, entry_id, None)

    async def _claim(self, stream: str, entry_id: str, entry: jobs.JobEntry) -> Claim | None:
        """Move the job to RUNNING for this worker; None when the entry was handled without a run:
        expired (never started within JOB_MAX_AGE_S), deferred (Flickr paused), or not claimed."""
        # Before the pause check: expiring needs no Flickr. A job that did start (its run died and
        # this entry takes it over) is past expiring: it goes on to the claim like any other.
        if self._too_old(entry) and await self._expire(stream, entry_id, entry):
            return None
        paused_ms = await self._guard.flickr_paused_ms()
        if paused_ms:
            await self._defer(stream, entry_id, entry, paused_ms)
            return None
        # The claim's hot copy and RUNNING hint may wait for the outcome (common.jobstore).
        claim = await self._store.claim(
            entry.job_id, self.worker_id, entry.attempt, self._lease_s, entry.rev, tag=entry.job_id
        )
        if claim is None:
            await self._not_claimed(stream, entry_id, entry)
        return claim

    async def _settle_takeover(self, stream: str, entry_id: str, entry: jobs.JobEntry, rev: int) -> bool:
        """A taken-over write: a Flickr read settles a few methods (worker.reconcile), the rest end
        unknown. True when that ended the job; False when the write certainly did not happen (send it)."""
        verdict = await self._reconcile(stream, entry_id, entry, rev)
        if verdict == reconcile.ABSENT:
            return False
        if verdict == reconcile.APPLIED:
            await self._finish_reconciled(stream, entry_id, entry, rev)
        else:
            await self._finish_unknown(stream, entry_id, entry, rev)
        return True

    async def _run_leased(
        self, stream: str, entry_id: str, entry: jobs.JobEntry, rev: int
    ) -> tuple[Success | Failure, bool]:
        """`_run` with the heartbeat keeping the job's lease, under a deadline over the whole run."""
        run = self._start_beats(stream, entry_id, entry.job_id, rev)
        metrics.IN_FLIGHT.inc()
        try:
            # A deadline over the whole run: whatever await might hang, the job moves on.
            async with asyncio.timeout(self._run_deadline(entry)):
                return await self._run(entry)
        except TimeoutError:
            return flickr_errors.from_transport(TimeoutError()), False
        finally:
            self._running.pop(run, None)
            metrics.IN_FLIGHT.dec()

    def _run_deadline(self, entry: jobs.JobEntry) -> float:
        """Longest a run may take: a Flickr call plus slack; uploads also follow their ticket."""
        deadline = self._settings.flickr_timeout_s * 2 + 30
        if entry.target != "rest":
            deadline += self._settings.upload_ticket_timeout_s
        return deadline

    def _too_old(self, entry: jobs.JobEntry) -> bool:
        """A job never started within its maximum age expires instead of running."""
        if entry.attempt or not entry.enqueued_ms:
            return False
        return time.time() - entry.enqueued_ms / 1000 > self._settings.job_max_age_s

    async def _expire(self, stream: str, entry_id: str, entry: jobs.JobEntry) -> bool:
        """Expire a job never started; False when it is not waiting any more (running or final)."""
        if not await self._store.expire(entry.job_id, entry.rev):
            return False
        metrics.JOBS.labels(outcome=jobs.EXPIRED).inc()
        await self._discard_blob(entry.blob_id)
        await announce(self._redis, entry.job_id, jobs.EXPIRED, has_callback=entry.has_callback)
        await self._release(entry)
        await self._ack(stream, entry_id, entry)
        return True

    async def _reconcile(self, stream: str, entry_id: str, entry: jobs.JobEntry, rev: int) -> str:
        """Read Flickr to learn whether a taken-over write took effect; never raises (UNKNOWN)."""
        check = reconcile.check_for(entry.method, entry.params) if entry.target == "rest" else None
        if check is None:
            metrics.RECONCILED.labels(verdict="unchecked").inc()
            return reconcile.UNKNOWN
        run = self._start_beats(stream, entry_id, entry.job_id, rev)
        try:
            answer = await asyncio.wait_for(
                self._read_for(entry, check), timeout=self._settings.flickr_timeout_s * 2 + 5
            )
            verdict = reconcile.UNKNOWN if answer is None else check.verdict(answer)
        except Exception:
            # Whatever broke the read (a store, the token lookup, a bug), the outcome stays unknown.
            log.warning("the reconciling read failed", exc_info=True, extra={"job_id": entry.job_id})
            verdict = reconcile.UNKNOWN
        finally:
            self._running.pop(run, None)
        metrics.RECONCILED.labels(verdict=verdict).inc()
        log.info(
            "reconciled a write taken over mid-flight: %s",
            verdict,
            extra={"job_id": entry.job_id, "method": entry.method, "read": check.method},
        )
        return verdict

    async def _read_for(self, entry: jobs.JobEntry, check: reconcile.Check) -> reconcile.Answer | None:
        """The reconciling read, signed with the job's token and reported to the breakers like a run."""
        token = await self._tokens.get(entry.user_id)
        if token is None or token.token_id_hash != entry.token:
            return None
        if not await self._take_budget():
            log.warning("no Flickr budget for the reconciling read", extra={"job_id": entry.job_id})
            return None
        outcome = await self._flickr.call_rest(check.method, check.params, token)
        await self._guard.report(None if isinstance(outcome, Success) else outcome)
        if isinstance(outcome, Success):
            return reconcile.Answer(body=outcome.body)
        return reconcile.Answer(flickr_code=outcome.flickr_code)

    async def _take_budget(self) -> bool:
        """One call from the shared Flickr budget: a move paid for the job's call, not for this read.

        Waits for the budget's next slot for up to one Flickr timeout (movers take slots too).
        """
        deadline = time.monotonic() + self._settings.flickr_timeout_s
        while True:
            grant = await self._guard.budget.take(1)
            if grant.granted:
                return True
            wait_s = grant.wait_ms / 1000
            if time.monotonic() + wait_s > deadline:
                return False
            await asyncio.sleep(wait_s)

    async def _finish_reconciled(self, stream: str, entry_id: str, entry: jobs.JobEntry, rev: int) -> None:
        """Complete a taken-over write whose effect Flickr shows, without sending it again."""
        result = {"stat": "ok", "reconciled": True}
        if not await self._store.finish(entry.job_id, rev, jobs.COMPLETED, result=result):
            log.warning("lost ownership of the job before recording %s", jobs.COMPLETED)
            return
        # Its dead worker may have died before dropping the token's cached reads.
        await self._cache.invalidate(entry.token)
        _count_final(entry, jobs.COMPLETED)
        await self._settle_taken_over(stream, entry_id, entry, jobs.COMPLETED)

    async def _finish_unknown(self, stream: str, entry_id: str, entry: jobs.JobEntry, rev: int) -> None:
        error = {
            "code": flickr_errors.WRITE_OUTCOME_UNKNOWN,
            "message": "the worker stopped while this write was in flight; FlickrHub does not resend writes. "
            "Check the result on Flickr and resubmit if it did not happen.",
            "retryable": False,
        }
        if await self._store.finish(entry.job_id, rev, jobs.FAILED, error=error):
            metrics.JOBS.labels(outcome="write_unknown").inc()
            await self._settle_taken_over(stream, entry_id, entry, jobs.FAILED)

    async def _settle_taken_over(self, stream: str, entry_id: str, entry: jobs.JobEntry, state: str) -> None:
        """After a taken-over write's final state is recorded: drop its blob, announce, release, ack."""
        await self._discard_blob(entry.blob_id)
        await announce(self._redis, entry.job_id, state, has_callback=entry.has_callback)
        await self._release(entry)
        await self._ack(stream, entry_id, entry)

    async def _defer(self, stream: str, entry_id: str, entry: jobs.JobEntry, paused_ms: int) -> None:
        """Flickr is paused: put the entry back for after the pause, untouched (no attempt spent)."""
        due_ms = int(time.time() * 1000) + paused_ms + random.randint(0, 1000)
        await self._redis.zadd(keys.DELAYED, {json.dumps(entry.to_fields(), sort_keys=True): due_ms})
        await self._ack(stream, entry_id, entry)
        metrics.JOBS.labels(outcome="deferred").inc()

    async def _not_claimed(self, stream: str, entry_id: str, entry: jobs.JobEntry) -> None:
        doc = await self._store.get(entry.job_id)
        if doc is None:
            log.warning("entry for unknown job; dropping it")
            await self._discard_blob(entry.blob_id)
            await self._release(entry)
            await self._ack(stream, entry_id, entry)
        elif doc["status"] in jobs.FINAL_STATES:
            # Its recorder may have died before updating the hot copy: status reads must see the end.
            await self._store.refresh_hot(doc)
            await self._discard_blob(entry.blob_id)
            # Already done (a duplicate move, or a crash after recording): make sure the webhook was queued.
            if entry.has_callback and doc["status"] != jobs.CANCELLED and "webhook" not in doc:
                await announce(self._redis, entry.job_id, doc["status"], has_callback=True)
            metrics.JOBS.labels(outcome="duplicate").inc()
            # Released again: repairs a worker killed between recording and releasing, and a cancel.
            await self._release(entry)
            await self._ack(stream, entry_id, entry)
        # Otherwise another worker holds a live lease: leave the entry pending; it is claimed again later.

    async def _run(self, entry: jobs.JobEntry) -> tuple[Success | Failure, bool]:
        token = await self._tokens.get(entry.user_id)
        if token is None or token.token_id_hash != entry.token:
            return Failure(
                flickr_errors.TOKEN_NOT_FOUND, "the user's Flickr token is gone or was replaced", False
            ), False
        if entry.target != "rest":  # upload or replace: a write, never cached
            outcome = await self._uploads.run(entry, token)
            await self._guard.report(None if isinstance(outcome, Success) else outcome)
            if isinstance(outcome, Success):
                await self._cache.invalidate(entry.token)
            return outcome, False
        cacheable = not entry.cache_bypass and not is_write(entry.method)
        if cacheable:
            with telemetry.span(telemetry.SPAN_CACHE_LOOKUP):
                cached = await self._cache.get(entry.method, entry.params, entry.token)
            if cached is not None:
                return Success(cached), True
        outcome = await self._flickr.call_rest(entry.method, entry.params, token)
        await self._guard.report(None if isinstance(outcome, Success) else outcome)
        if isinstance(outcome, Success):
            if cacheable:
                with telemetry.span(telemetry.SPAN_CACHE_STORE):
                    await self._cache.put(entry.method, entry.params, entry.token, outcome.body)
            elif is_write(entry.method):
                await self._cache.invalidate(entry.token)
        return outcome, False

    async def _record_kept(
        self,
        stream: str,
        entry_id: str,
        entry: jobs.JobEntry,
        rev: int,
        outcome: Success | Failure,
        from_cache: bool,
    ) -> int:
        """`_record`, retried while MongoDB cannot be reached, the entry kept ours meanwhile.

        The call has run: left pending, the entry would be taken over after the visibility timeout
        and a read run again (a write reconciled, or ended unknown). A MongoDB restart or failover is
        waited out instead, resetting the entry's idle time in Redis so no other worker claims it.
        A retried compare-and-set whose first try was applied finds the job moved on: the entry then
        stays pending and its redelivery meets a final job (acknowledged without running).
        """
        try:
            return await self._record(stream, entry_id, entry, rev, outcome, from_cache)
        except ConnectionFailure as exc:
            failure = exc
        keep = asyncio.create_task(self._keep_entry(stream, entry_id))
        try:
            delay = 0.1
            while True:
                log.warning(
                    "could not record the outcome (%s); retrying",
                    type(failure).__name__,
                    extra={"job_id": entry.job_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    return await self._record(stream, entry_id, entry, rev, outcome, from_cache)
                except ConnectionFailure as exc:
                    failure = exc
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep

    async def _keep_entry(self, stream: str, entry_id: str) -> None:
        """Reset the entry's idle time every beat (Redis only: MongoDB may be the one away)."""
        while True:
            try:
                await self._redis.xclaim(
                    stream, keys.WORKER_GROUP, self.worker_id, 0, [entry_id], justid=True
                )
            except RedisError as exc:
                log.warning("could not keep entry %s: %s", entry_id, type(exc).__name__)
            await asyncio.sleep(self._lease_s / 3)

    async def _record(
        self,
        stream: str,
        entry_id: str,
        entry: jobs.JobEntry,
        rev: int,
        outcome: Success | Failure,
        from_cache: bool,
    ) -> int:
        """Write the outcome to MongoDB and announce it: NOT_OWNED when this worker no longer owns the
        job, RECORDED (the entry still to acknowledge) or SETTLED (acknowledged with the outcome).

        running -> retrying, completed or failed (module doc). A final outcome's hint (and webhook),
        release and acknowledgement go in the Redis round trip of its hot copy (`_after`); a retry's
        are sent after it.
        """
        attempt = entry.attempt + 1
        if isinstance(outcome, Failure) and _retries(entry, outcome, attempt):
            return await self._record_retry(entry, rev, outcome, attempt)
        # An upload's photo bytes go before its entry is acknowledged: a crash in between repeats that.
        ack = not entry.blob_id
        if isinstance(outcome, Success):
            settle = _Settle(entry, jobs.COMPLETED, stream, entry_id, ack)
            owned = await self._store.finish(
                entry.job_id, rev, jobs.COMPLETED, result=outcome.body, from_cache=from_cache, tag=settle
            )
        else:
            error, exhausted = _final_error(entry, outcome, attempt)
            if exhausted:
                await self._dead_letter(
                    stream, entry_id, entry.to_fields(), "attempts_exhausted", outcome.message
                )
            settle = _Settle(entry, jobs.FAILED, stream, entry_id, ack)
            owned = await self._store.finish(entry.job_id, rev, jobs.FAILED, error=error, tag=settle)
        if not owned:
            log.warning("lost ownership of the job before recording %s", settle.state)
            return NOT_OWNED
        _count_final(entry, settle.state)
        self._failpoints.hit(failpoints.WORKER_ANNOUNCED)
        await self._discard_blob(entry.blob_id)
        log.info(
            "job %s",
            settle.state,
            extra={"job_id": entry.job_id, "attempt": attempt, "from_cache": from_cache},
        )
        return SETTLED if settle.ack else RECORDED

    async def _record_retry(self, entry: jobs.JobEntry, rev: int, outcome: Failure, attempt: int) -> int:
        """Schedule the next attempt of a transient failure, then record and announce RETRYING."""
        due = now() + timedelta(
            seconds=backoff.delay(
                attempt, self._settings.worker_backoff_base_s, self._settings.worker_backoff_max_s
            )
        )
        retry = entry.next_attempt(rev + 1).with_trace(dict(telemetry.inject_fields({})))
        # Scheduled before the state says so: a crash in between repeats an attempt, never loses one.
        await self._redis.zadd(
            keys.DELAYED, {json.dumps(retry.to_fields(), sort_keys=True): int(due.timestamp() * 1000)}
        )
        if not await self._store.schedule_retry(entry.job_id, rev, _error(outcome), due):
            log.warning("lost ownership of the job before recording %s", jobs.RETRYING)
            return NOT_OWNED
        self._failpoints.hit(failpoints.WORKER_RECORDED)
        metrics.JOBS.labels(outcome=jobs.RETRYING).inc()
        await self._announce(entry.job_id, jobs.RETRYING, has_callback=entry.has_callback)
        self._failpoints.hit(failpoints.WORKER_ANNOUNCED)
        log.info("job %s", jobs.RETRYING, extra={"job_id": entry.job_id, "attempt": attempt})
        return RECORDED

    def _after(self, pipe: Pipeline, tags: list[Any]) -> None:
        """JobStore.after: after the hot copies of a turn's claims and outcomes, on their pipeline,
        the hints (and webhooks), then for outcomes the releases and acknowledgements."""
        settles = [t for t in tags if isinstance(t, _Settle)]
        if settles:
            self._failpoints.hit(failpoints.WORKER_RECORDED)
        announce_on(
            pipe,
            [
                (t.entry.job_id, t.state, t.entry.has_callback)
                if isinstance(t, _Settle)
                else (t, jobs.RUNNING, False)
                for t in tags
            ],
        )
        if settles:
            release_on(pipe, [(t.entry.client_id, [t.entry.job_id]) for t in settles])
            _ack_on(pipe, [(t.stream, t.entry_id, t.entry) for t in settles if t.ack])

    async def _release(self, entry: jobs.JobEntry) -> None:
        """Stop counting a final job against the caps; a Redis error leaves the entry to come back."""
        await self._admission.release(entry.client_id, [entry.job_id])

    async def _discard_blob(self, blob_id: str) -> None:
        """Remove a finished upload's photo bytes; a failure leaves an orphan blob, never a failed job."""
        if not blob_id:
            return
        try:
            await self._blobs.delete(blob_id)
        except PyMongoError as exc:
            log.warning("could not delete blob %s: %s", blob_id, type(exc).__name__)

    async def _announce(self, job_id: str, state: str, *, has_callback: bool) -> None:
        """common.announce, sharing the turn's round trip with the other jobs' steps."""
        await self._announces.submit((job_id, state, has_callback))

    async def _announce_all(self, changes: list[tuple[str, str, bool]]) -> list[None]:
        """Every announcement of one turn in one pipeline (one PUBLISH for all of them)."""
        pipe = self._redis.pipeline(transaction=False)
        announce_on(pipe, changes)
        _raise_first(await resp.run(pipe, self._wire))
        return [None] * len(changes)

    def _start_beats(self, stream: str, entry_id: str, job_id: str, rev: int) -> tuple[str, str]:
        """Have the heartbeat keep the job's lease and the entry fresh until the run returned here is
        popped from `_running` (in a `finally`).

        One task beats for every run of this worker (most runs end long before their first beat): a
        run only registers here, which costs no task of its own (and, a plain call, no await).
        """
        run = (stream, entry_id)
        self._running[run] = (job_id, rev, time.monotonic())
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="heartbeats")
        return run

    async def _heartbeats(self) -> None:
        """Keep the lease and the entry's idle time fresh for every run slower than a beat."""
        interval = self._lease_s / 3
        while True:
            await asyncio.sleep(min(1.0, interval / 4))
            now_s = time.monotonic()
            for (stream, entry_id), (job_id, rev, since) in list(self._running.items()):
                if now_s - since >= interval and (stream, entry_id) in self._running:
                    self._running[(stream, entry_id)] = (job_id, rev, now_s)
                    await self._beat(stream, entry_id, job_id, rev)

    async def _beat(self, stream: str, entry_id: str, job_id: str, rev: int) -> None:
        try:
            if not await self._store.extend_lease(job_id, rev, self._lease_s):
                log.warning("lease lost while the call runs; the outcome will not be recorded by this worker")
            await self._redis.xclaim(stream, keys.WORKER_GROUP, self.worker_id, 0, [entry_id], justid=True)
        except (RedisError, PyMongoError) as exc:
            # A store hiccup must not abort a call already sent to Flickr: the next beat tries again.
            log.warning("heartbeat failed: %s", type(exc).__name__)

    async def _ack(self, stream: str, entry_id: str, entry: jobs.JobEntry | None) -> None:
        """Acknowledge and delete a handled entry; its job leaves its token's in-flight count."""
        await self._acks.submit((stream, entry_id, entry))

    async def _ack_all(self, handled: list[tuple[str, str, jobs.JobEntry | None]]) -> list[None]:
        """Every entry handled in one turn, acknowledged in one round trip: an XACK and an XDEL per
        stream and a ZREM per token, whatever the number of entries."""
        pipe = self._redis.pipeline(transaction=False)
        _ack_on(pipe, handled)
        _raise_first(await resp.run(pipe, self._wire))
        return [None] * len(handled)

    async def close(self) -> None:
        """Send the hot copies still deferred; stop the heartbeat task (its runs are over or handed back)."""
        with contextlib.suppress(RedisError):
            await self._store.flush()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task

    async def _dead_letter(
        self, stream: str, entry_id: str, fields: dict[str, str], reason: str, detail: str
    ) -> None:
        metrics.DEAD_LETTERS.labels(reason=reason).inc()
        await self._redis.xadd(
            keys.DEAD_LETTERS,
            maxlen=self._settings.dead_letters_max,
            approximate=True,
            fields=redisio.fields(
                {
                    **fields,
                    "dlq_reason": reason,
                    "dlq_detail": detail[:500],
                    "dlq_stream": stream,
                    "dlq_entry": entry_id,
                }
            ),
        )


def _ack_on(pipe: Pipeline, handled: list[tuple[str, str, jobs.JobEntry | None]]) -> None:
    """Queue the acknowledgement of handled entries: an XACK and an XDEL per stream and one ZREM of
    their in-flight members (keys.IN_FLIGHT), whatever the number of entries and tokens."""
    by_stream: dict[str, list[str]] = {}
    members: list[str] = []
    for stream, entry_id, entry in handled:
        by_stream.setdefault(stream, []).append(entry_id)
        if entry is not None and entry.moved_ms:
            members.append(keys.in_flight_member(entry.token, entry.moved_ms, entry.job_id))
    for stream, ids in by_stream.items():
        pipe.xack(stream, keys.WORKER_GROUP, *ids)
        pipe.xdel(stream, *ids)
    if members:
        pipe.zrem(keys.IN_FLIGHT, *members)


def _raise_first(replies: list[Any]) -> None:
    """What `pipe.execute()` does with an error reply: raise it (here, once every reply is in)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _is_write(entry: jobs.JobEntry) -> bool:
    """Uploads, replaces and Flickr write methods: their effect must happen at most once."""
    return entry.target != "rest" or is_write(entry.method)


def _describe(span: trace.Span, entry: jobs.JobEntry, entry_id: str) -> None:
    """The execute span's attributes (a no-op span while nothing exports spans)."""
    span.set_attribute(telemetry.ATTR_JOB_ID, entry.job_id)
    span.set_attribute(telemetry.ATTR_METHOD, entry.method)
    span.set_attribute(telemetry.ATTR_ATTEMPT, entry.attempt + 1)
    span.set_attribute(telemetry.ATTR_MESSAGE_ID, entry_id)


def _retries(entry: jobs.JobEntry, failure: Failure, attempt: int) -> bool:
    """Whether a failed attempt is tried again: retryable with attempts left, unless it is a write
    that got no answer (it may have reached Flickr)."""
    return failure.retryable and attempt < entry.max_attempts and not (failure.ambiguous and _is_write(entry))


def _final_error(entry: jobs.JobEntry, failure: Failure, attempt: int) -> tuple[dict[str, Any], bool]:
    """The error a failed job is recorded with, and whether it ran out of attempts (a dead letter)."""
    error = _error(failure)
    if failure.ambiguous and _is_write(entry):
        # No answer to a write that may have reached Flickr: the client decides, not a retry.
        return {**error, "code": flickr_errors.WRITE_OUTCOME_UNKNOWN, "retryable": False}, False
    if failure.retryable:  # not retried (`_retries`): its attempts ran out
        message = f"{attempt} attempts failed; last: {failure.message}"
        return {**error, "code": flickr_errors.ATTEMPTS_EXHAUSTED, "message": message}, True
    return error, False


def _count_final(entry: jobs.JobEntry, state: str) -> None:
    """Count a job recorded final and how long it took from its submission."""
    metrics.JOBS.labels(outcome=state).inc()
    if entry.enqueued_ms:
        metrics.JOB_SECONDS.observe(max(0.0, time.time() - entry.enqueued_ms / 1000))


def _error(failure: Failure) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": failure.code,
        "message": failure.message,
        "flickr_code": failure.flickr_code,
        "http_status": failure.http_status,
        "retryable": failure.retryable,
    }
    if failure.duplicate_photo_id:
        error["duplicate_photo_id"] = failure.duplicate_photo_id
    return error
