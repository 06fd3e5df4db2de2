"""Job documents in MongoDB: the source of truth for every accepted job.

Every transition is a compare-and-set: read the job by `job_id` (index), decide in
Python whether the transition is allowed from what was read, then `update_one`
filtered on `(job_id, rev)` — the exact fields of one compound index — and bump
`rev`. Two writers that read the same revision cannot both win. Filters never mix
in other fields: an index-only plan on every server (SecantusDB's planner scans the
collection as soon as a filter has a field its index lacks), and never
`find_one_and_update`, which scans there too. A transition that does not apply
answers False; the caller decides from a re-read.

Every write that bumps `rev` goes through this class: after MongoDB, it applies the same change to
the job's hot copy in Redis (common.hotstate), which status reads use first. A writer that bumped
`rev` elsewhere would leave a copy behind MongoDB until the next transition.

A worker's claim leaves its copy waiting up to HOT_DEFER_S: most jobs end sooner, and then the
claim and the outcome reach the copy in one step (status reads see the job queued until then:
a revision MongoDB passed through). Whoever owns a grouped write may also hand it a `tag`: once
the write won, `after` queues that caller's own Redis steps for the tags (the worker's hint,
release and acknowledgement) in the same pipeline as the copies, so a turn of outcomes costs one
Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import jobs, jsontext, resp
from common.groupcommit import Batcher
from common.hotstate import HotState
from common.mongo import Doc
from common.settings import Settings

log = logging.getLogger(__name__)

_STATE_FIELDS = {"_id": 0, "rev": 1, "status": 1, "worker_id": 1, "attempt_token": 1, "lease_until": 1}


# A non-final hot copy untouched this long is checked against MongoDB: a writer killed between its
# MongoDB write and its copy update leaves the copy behind, and a job may never move again to fix it.
HOT_RECHECK_AFTER = timedelta(seconds=10)
# How long a grouped claim's hot copy (and what `after` queues for it) may wait for the job's outcome.
HOT_DEFER_S = 0.25

# Queues a caller's Redis steps for the tags of writes that won, on the pipeline of their hot copies.
After = Callable[[Pipeline, list[Any]], None]


def _unsettled(held: Doc, after: timedelta) -> bool:
    """True for a copy of a live job that has not changed for `after` (it may be behind MongoDB)."""
    updated = held.get("updated_at")
    return (
        held.get("status") not in jobs.FINAL_STATES
        and isinstance(updated, datetime)
        and now() - updated > after
    )


def now() -> datetime:
    """Current UTC time, truncated to milliseconds (what MongoDB stores)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Retention:
    """How long a job stays in MongoDB after its final state (JOB_RETENTION_DAYS and its sibling)."""

    final: timedelta = timedelta(days=90)  # completed, failed and cancelled
    expired: timedelta = timedelta(days=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        """The periods `settings` configure."""
        return cls(
            final=timedelta(days=settings.job_retention_days),
            expired=timedelta(days=settings.job_expired_retention_days),
        )

    def expire_at(self, state: str, at: datetime) -> datetime:
        """When a job that reached final `state` at `at` leaves the collection (the TTL index reads this)."""
        return at + (self.expired if state == jobs.EXPIRED else self.final)


@dataclass(frozen=True)
class _Write:
    """One compare-and-set of a group commit, and the fields that show it won when re-read."""

    job_id: str
    rev: int
    update: dict[str, Any]
    mark: dict[str, Any] = field(default_factory=dict)
    defer: bool = False  # a claim: its hot copy may wait HOT_DEFER_S for the outcome
    tag: Any = None  # handed to `after` once the write won (None: nothing to queue)


@dataclass(frozen=True)
class Claim:
    """A claimed job: the revision now owned, and whether a dead worker's run was taken over.

    `tagged`: the claim's tag goes to `after` with its hot copy (deferred, see the module doc).
    """

    rev: int
    taken_over: bool
    tagged: bool = False


class JobStore:
    """Reads and transitions job documents."""

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        *,
        hot: HotState | None = None,
        retention: Retention | None = None,
        hot_recheck_after: timedelta = HOT_RECHECK_AFTER,
        redis: Any = None,
        wire: resp.Multiplexed | None = None,
    ) -> None:
        self.jobs = collection
        self.hot = hot
        self._redis = redis  # for `after`'s pipelines when there is no hot state
        self._wire = wire
        self.after: After | None = None
        self._deferred: dict[str, tuple[_Write, float]] = {}  # job id -> (claim, its copy due by)
        self._defer_timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        self.retention = retention or Retention()
        self._hot_recheck_after = hot_recheck_after
        # The claims and outcomes written in one event-loop turn share one bulk write (and one Redis
        # round trip for their hot copies): a worker reads its entries in batches, so they arrive together.
        # At most two bulk writes in flight: what arrives meanwhile goes in the next one, so a journaled
        # (slower) write makes bigger batches instead of a queue of small ones.
        self._turn: Batcher[_Write, bool] = Batcher(self._write_all, max_in_flight=2)

    @classmethod
    def from_settings(
        cls, collection: AsyncCollection[Doc], redis: Any, settings: Settings, wire: Any = None
    ) -> JobStore:
        """A store with the hot state (in the queue Redis `redis`, its pipelines over `wire` when given:
        common.resp) and retention `settings` ask for."""
        hot = HotState.from_settings(redis, settings, wire)
        return cls(collection, hot=hot, retention=Retention.from_settings(settings), redis=redis, wire=wire)

    async def get(self, job_id: str) -> Doc | None:
        """The job document, or None."""
        return await self.jobs.find_one({"job_id": job_id}, {"_id": 0})

    async def status(self, job_id: str) -> tuple[Doc | None, str]:
        """The job's fields for a status read and where they came from ("redis" or "mongo").

        A whole hot copy answers; otherwise MongoDB does, and its answer becomes the copy.
        """
        if self.hot is not None:
            held = await self.hot.get(job_id)
            if held is not None and not _unsettled(held, self._hot_recheck_after):
                return held, "redis"
        doc = await self.get(job_id)
        if doc is not None and self.hot is not None:
            await self.hot.put(doc)
        return doc, "mongo"

    async def refresh_hot(self, doc: Doc) -> None:
        """Put `doc` (just read from MongoDB) as the hot copy, replacing any older one."""
        if self.hot is not None:
            await self.hot.put(doc)

    async def _transition(
        self, job_id: str, allowed: Callable[[Doc], bool], update: dict[str, Any]
    ) -> int | None:
        """Apply `update` if `allowed(current state)`, as a compare-and-set; the new revision or None."""
        doc = await self.jobs.find_one({"job_id": job_id}, _STATE_FIELDS)
        if doc is None or not allowed(doc):
            return None
        return await self._cas(job_id, int(doc.get("rev", 0)), update)

    async def _cas(self, job_id: str, rev: int, update: dict[str, Any], *, bump: bool = True) -> int | None:
        """Apply `update` only at revision `rev`; the revision after it, or None if the job moved on."""
        if bump:
            update = {**update, "$inc": {**update.get("$inc", {}), "rev": 1}}
        result = await self.jobs.update_one({"job_id": job_id, "rev": rev}, update)
        if result.modified_count != 1:
            return None
        if not bump:
            return rev
        if self.hot is not None:  # after MongoDB: the copy never runs ahead of the record
            await self.hot.apply(job_id, rev + 1, *self._chain(job_id, rev, update))
        return rev + 1

    async def _cas_grouped(self, write: _Write) -> int | None:
        """`_cas` (bumping `rev`) through the turn's group commit; the revision after it, or None."""
        update = {**write.update, "$inc": {**write.update.get("$inc", {}), "rev": 1}}
        won = await self._turn.submit(
            _Write(write.job_id, write.rev, update, write.mark, write.defer, write.tag)
        )
        return write.rev + 1 if won else None

    async def _write_all(self, writes: list[_Write]) -> list[bool | Exception]:
        """One unordered bulk write of every compare-and-set of a turn; which of them won.

        A bulk write reports how many documents changed, not which: when fewer than all did, one
        indexed read tells the winners by the revision and the `mark` fields each write set (a
        claim's unique attempt token, an outcome's time). A job named twice in one turn (a duplicate
        entry) keeps its first write here; the second loses, as it would have one turn later.
        """
        first: dict[str, int] = {}
        batch = [w for i, w in enumerate(writes) if first.setdefault(w.job_id, i) == i]
        ops = [UpdateOne({"job_id": w.job_id, "rev": w.rev}, w.update) for w in batch]
        try:
            changed = (await self.jobs.bulk_write(ops, ordered=False)).modified_count
        except BulkWriteError as exc:  # some writes failed outright (their documents are unchanged)
            changed = -1 if exc.details.get("writeErrors") else int(exc.details.get("nModified", 0))
        won = dict.fromkeys((w.job_id for w in batch), changed == len(batch))
        if changed != len(batch):
            projection = {
                "_id": 0,
                "job_id": 1,
                "rev": 1,
                **dict.fromkeys({k for w in batch for k in w.mark}, 1),
            }
            held = {d["job_id"]: d async for d in self.jobs.find({"job_id": {"$in": list(won)}}, projection)}
            for w in batch:
                doc = held.get(w.job_id)
                won[w.job_id] = (
                    doc is not None
                    and doc.get("rev") == w.rev + 1
                    and all(doc.get(k) == v for k, v in w.mark.items())
                )
        failed = await self._publish([w for w in batch if won[w.job_id]])
        results: list[bool | Exception] = []
        for i, w in enumerate(writes):
            sent = w.tag is not None and not (w.defer and self.hot is not None)
            results.append(
                failed
                if failed is not None and won[w.job_id] and sent
                else won[w.job_id] and first[w.job_id] == i
            )
        return results

    async def _publish(self, visible: list[_Write]) -> Exception | None:
        """After MongoDB: the hot copies of writes that won (claims' deferred) and `after`'s steps.

        Returns what failed `after`'s steps (their callers learn it), None when they went through.
        """
        if not visible:
            return None
        at = time.monotonic()
        chains: list[tuple[_Write, list[dict[str, Any]]]] = []
        for w in visible:
            if w.defer and self.hot is not None:
                self._deferred[w.job_id] = (w, at + HOT_DEFER_S)
                if self._defer_timer is None:
                    self._defer_timer = asyncio.get_running_loop().call_later(HOT_DEFER_S, self._due)
                continue
            chains.append((w, self._chain(w.job_id, w.rev, w.update)))
        return await self._send(chains) if chains else None

    def _chain(self, job_id: str, rev: int, update: dict[str, Any]) -> list[dict[str, Any]]:
        """`update` (from `rev`), after the deferred claim it follows if one is waiting.

        A claim applied this way gets no hint of its own: nobody saw the job running.
        """
        held = self._deferred.pop(job_id, None)
        if held is not None and held[0].rev + 1 == rev:
            return [held[0].update, update]
        return [update]

    async def _send(self, chains: list[tuple[_Write, list[dict[str, Any]]]]) -> Exception | None:
        """One pipeline: each chain's copy update, then `after`'s steps for the tagged writes."""
        tags = [w.tag for w, _ in chains if w.tag is not None]
        steps = bool(tags and self.after is not None)
        hot = self.hot
        if hot is None and not steps:
            return None
        pipe = hot.pipeline() if hot is not None else self._redis.pipeline(transaction=False)
        if hot is not None:
            for w, updates in chains:
                hot.apply_on(pipe, w.job_id, w.rev + 1, updates)
        copies = len(chains) if hot is not None else 0
        if steps:
            assert self.after is not None
            self.after(pipe, tags)
        try:
            replies = await resp.run(pipe, self._wire)
        except RedisError as exc:
            replies = [exc] * (copies + (1 if steps else 0))
        if hot is not None:
            for (w, _), reply in zip(chains, replies[:copies], strict=True):
                if isinstance(reply, Exception):  # the copy may now be behind MongoDB: readers go there
                    await hot.drop(w.job_id)
        return next((r for r in replies[copies:] if isinstance(r, Exception)), None)

    def _due(self) -> None:
        """The timer: send the deferred copies that waited long enough (one pipeline)."""
        self._defer_timer = None
        at = time.monotonic()
        due = [w for w, by in self._deferred.values() if by <= at]
        for w in due:
            del self._deferred[w.job_id]
        if self._deferred:
            first = min(by for _, by in self._deferred.values())
            self._defer_timer = asyncio.get_running_loop().call_later(max(0.0, first - at), self._due)
        if due:
            self._spawn([(w, [w.update]) for w in due])

    def _spawn(self, chains: list[tuple[_Write, list[dict[str, Any]]]]) -> None:
        task = asyncio.create_task(self._send(chains))
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and (task.exception() or task.result()) is not None:
            log.warning("deferred hot copies not written: %r", task.exception() or task.result())

    async def flush(self) -> None:
        """Send every deferred copy now and wait for what is being sent (graceful shutdown)."""
        if self._defer_timer is not None:
            self._defer_timer.cancel()
            self._defer_timer = None
        deferred, self._deferred = list(self._deferred.values()), {}
        if deferred:
            self._spawn([(w, [w.update]) for w, _ in deferred])
        while self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def claim(
        self,
        job_id: str,
        worker_id: str,
        attempt: int,
        lease_s: float,
        expected_rev: int | None = None,
        *,
        tag: Any = None,
    ) -> Claim | None:
        """Take a queued or retrying job (or one whose runner's lease ran out); the revision now owned.

        An entry knows the revision its producer left the job at (queued by the gateway, retrying
        by a worker), so the usual claim is one write with no read; only a stale entry (a
        duplicate, a takeover after a crash) pays a read to learn the job's current state.
        """
        t = now()
        # Unique per claim: a re-read tells this claim from an earlier one of the same worker.
        token = f"{attempt}:{os.urandom(8).hex()}"
        update = {
            "$set": {
                "status": jobs.RUNNING,
                "worker_id": worker_id,
                "attempt_token": token,
                "lease_until": t + timedelta(seconds=lease_s),
                "updated_at": t,
            },
            "$min": {"started_at": t},
            "$inc": {"attempts": 1},
        }
        if expected_rev is not None:
            mark = {"worker_id": worker_id, "attempt_token": token}
            owned = await self._cas_grouped(_Write(job_id, expected_rev, update, mark, True, tag))
            if owned is not None:
                return Claim(owned, taken_over=False, tagged=tag is not None)
        doc = await self.jobs.find_one({"job_id": job_id}, _STATE_FIELDS)
        if doc is None:
            return None
        lease = doc.get("lease_until")
        abandoned = doc["status"] == jobs.RUNNING and lease is not None and lease < t
        if doc["status"] not in (jobs.QUEUED, jobs.RETRYING) and not abandoned:
            return None
        owned = await self._cas(job_id, int(doc.get("rev", 0)), update)
        # Taking over a run whose worker died mid-call: the caller must not repeat a write blindly.
        return None if owned is None else Claim(owned, taken_over=abandoned)

    async def extend_lease(self, job_id: str, rev: int, lease_s: float) -> bool:
        """Keep a long call's lease alive while revision `rev` is still ours; False if it was taken."""
        update = {"$set": {"lease_until": now() + timedelta(seconds=lease_s)}}
        return await self._cas(job_id, rev, update, bump=False) is not None

    async def finish(
        self,
        job_id: str,
        rev: int,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        from_cache: bool = False,
        tag: Any = None,
    ) -> bool:
        """Record a final outcome of the run that owns revision `rev`; False if it no longer owns the job.

        With a `tag`, `after` queues its steps once the write won; what failed them is raised here.
        """
        t = now()
        fields: dict[str, Any] = {
            "status": state,
            "updated_at": t,
            "finished_at": t,
            "expire_at": self.retention.expire_at(state, t),
            "from_cache": from_cache,
            "lease_until": None,
        }
        if result is not None:
            fields["result_json"] = jsontext.dumps(result)
        if error is not None:
            fields["error"] = error
        mark = {"status": state, "updated_at": t}
        return await self._cas_grouped(_Write(job_id, rev, {"$set": fields}, mark, tag=tag)) is not None

    async def schedule_retry(self, job_id: str, rev: int, error: dict[str, Any], due: datetime) -> bool:
        """Record a transient failure; the job waits in RETRYING (at revision rev + 1) until `due`."""
        update = {
            "$set": {"status": jobs.RETRYING, "error": error, "next_attempt_at": due, "updated_at": now()}
        }
        return await self._cas(job_id, rev, update) is not None

    async def expire(self, job_id: str, rev: int) -> bool:
        """Mark a job that was never started within its maximum age as expired."""
        t = now()
        update = {
            "$set": {
                "status": jobs.EXPIRED,
                "updated_at": t,
                "finished_at": t,
                "expire_at": self.retention.expire_at(jobs.EXPIRED, t),
                "error": {"code": "EXPIRED", "message": "not started within the maximum job age"},
            }
        }
        if await self._cas(job_id, rev, update) is not None:
            return True
        # Only a job still queued: a retrying one has started (a stale copy of its first entry,
        # redelivered after the maximum age, must not expire it).
        allowed = await self._transition(job_id, lambda d: d["status"] == jobs.QUEUED, update)
        return allowed is not None

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not started (queued or retrying)."""
        t = now()
        update = {
            "$set": {
                "status": jobs.CANCELLED,
                "updated_at": t,
                "finished_at": t,
                "expire_at": self.retention.expire_at(jobs.CANCELLED, t),
                "error": {"code": "CANCELLED", "message": "cancelled by the client"},
            }
        }
        allowed = await self._transition(
            job_id, lambda d: d["status"] in (jobs.QUEUED, jobs.RETRYING), update
        )
        return allowed is not None

    async def mark_webhook(self, job_id: str, status: str, attempts: int, http_status: int = 0) -> None:
        """Remember what became of the job's webhook, and drop its secret: nothing will be signed again."""
        await self.jobs.update_one(
            {"job_id": job_id},
            {
                "$set": {"webhook": {"status": status, "attempts": attempts, "http_status": http_status}},
                "$unset": {"callback_secret": ""},
            },
        )
