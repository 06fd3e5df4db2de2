"""Group commit of accepted jobs: one insert_many, then one Redis pipeline, for every job of a batch.

The job document is written (journaled, see common.mongo) before a submission is answered, and
its queue entry appended before the answer too. Submissions arriving within
GATEWAY_INSERT_BATCH_MS share both round trips: on SecantusDB one insert costs ~1.5 ms while
insert_many amortises well, and a pipeline costs the same for 1 or 100 entries. Per batch:

1. `insert_many` of the documents (unordered: one bad document fails alone);
2. one pipeline: the admissions deferred to it (a ZADD per client and one for all,
   common.admission), per job its hot copy (a SET, common.hotstate) and its XADD, then the tokens'
   SADD into the active set and their clients in one HSET;
3. a job whose entry could not be appended is undone (its document deleted) and its caller gets
   UNAVAILABLE, so a refused submission leaves nothing behind. An entry appended for a document
   that was then deleted is harmless: a worker meets no job and drops it.

A caller cancelled before its outcome leaves nothing behind either: a job not yet in a flush's
insert is left out of it; one written meanwhile, or before the caller resumed, is taken back
(`withdraw`, in the background: nobody waits for it). A caller that fails for its own reasons
after a commit (a batch, all or none) takes its jobs back with `withdraw` itself.

Two lanes: a token with HEAVY_AT or more submissions in the committer already (a flood) commits in
the bulk lane, every other submission in the light lane, each with its own batches in flight. A
flood then fills the bulk lane's batches and waits for its slots, while another token's job goes
out in the light lane's next batch instead of queueing behind the flood's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import DeleteOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError
from redis.exceptions import RedisError

from common import redisio, resp, tokenqueue
from common.admission import Admission
from common.errors import Unavailable
from common.groupcommit import Batcher
from common.hotstate import HotState
from common.jobs import JobEntry
from common.mongo import Doc

log = logging.getLogger(__name__)

MAX_BATCH = 500
# Batches being written at once. The insert is journaled (one log flush each, common.mongo): while
# two are in flight, new jobs gather for the next, so a slow flush makes a bigger batch rather than
# a queue of small ones. Two, not one: a batch's Redis step overlaps the next batch's insert.
MAX_IN_FLIGHT = 2
# A token with this many submissions in the committer already commits in the bulk lane.
HEAVY_AT = 4


@dataclass(slots=True)
class Accepted:
    """A job to commit: its document and its queue entry, and where it stands."""

    doc: Doc
    entry: JobEntry
    abandoned: bool = False  # its caller was cancelled before it learned the outcome
    committed: bool = False  # its flush wrote and enqueued it


class JobCommitter:
    """Writes accepted jobs in batches; each caller learns whether its own job was committed."""

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        redis: redisio.Redis,
        hot: HotState | None,
        window_ms: float,
        wire: resp.Multiplexed | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._jobs = collection
        self._redis = redis
        self._wire = wire  # the batch's pipeline goes over it when given (common.resp)
        self._hot = hot
        self._lanes: tuple[Batcher[Accepted, None], ...] = tuple(
            Batcher(self._flush, window_s=window_ms / 1000, max_items=MAX_BATCH, max_in_flight=MAX_IN_FLIGHT)
            for _ in ("light", "bulk")
        )
        self._open: dict[str, int] = {}  # token -> its submissions in the committer now
        # Admissions deferred to the batch's pipeline (common.admission.Admission.defer).
        self._admission = admission
        self._taking_back: set[asyncio.Task[None]] = set()

    async def commit(self, doc: Doc, entry: JobEntry) -> None:
        """Record and enqueue one job; raises Unavailable (nothing left behind) when either store fails.

        Cancelled, it leaves nothing behind either (see the module doc).
        """
        token = entry.token
        open_now = self._open.get(token, 0)
        self._open[token] = open_now + 1
        job = Accepted(doc, entry)
        try:
            await self._lanes[open_now >= HEAVY_AT].submit(job)
        except asyncio.CancelledError:
            job.abandoned = True  # a flush still to come leaves it out or takes it back
            if job.committed:  # its flush is over: nobody else will
                self._take_back([job])
            raise
        finally:
            if self._open[token] <= 1:
                del self._open[token]
            else:
                self._open[token] -= 1

    async def commit_many(self, jobs: Sequence[tuple[Doc, JobEntry]]) -> list[BaseException | None]:
        """Record and enqueue several jobs (each in its lane, as `commit`); per job None or its error."""
        results = await asyncio.gather(
            *(self.commit(doc, entry) for doc, entry in jobs), return_exceptions=True
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def withdraw(self, job_ids: Sequence[str]) -> None:
        """Take back committed jobs nobody was answered for (their submission failed or gave up).

        Only documents still at revision 0 go (as accepted: no worker has claimed them), with their
        hot copies; a job a worker already claimed stays and runs. Their queue entries are harmless:
        a worker meets no job and drops the entry.
        """
        # One statement per job: {job_id: {$in: ...}, rev: 0} is planned as a collection scan.
        taken = await self._jobs.bulk_write([DeleteOne({"job_id": job_id, "rev": 0}) for job_id in job_ids])
        if taken.deleted_count and self._hot is not None:
            for job_id in job_ids:
                await self._hot.drop(job_id)

    async def _flush(self, batch: list[Accepted]) -> list[BaseException | None]:
        # A job whose caller gave up before now is not written (its result is read by nobody).
        items = batch
        for item in batch:
            if item.abandoned:
                items = [item for item in batch if not item.abandoned]
                break
        results: list[BaseException | None] = [None] * len(items)
        try:
            if items:
                await self._jobs.insert_many([item.doc for item in items], ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                results[int(err["index"])] = Unavailable("job store refused the job; retry shortly")
        except PyMongoError as exc:
            log.warning("job insert failed: %s", type(exc).__name__)
            results = [Unavailable("job store unavailable; retry shortly")] * len(items)
        written = [i for i, result in enumerate(results) if result is None]
        if written:
            for i in await self._enqueue([items[i] for i in written]):
                results[written[i]] = Unavailable("queue unavailable; retry shortly")
        gave_up = []
        for item, result in zip(items, results, strict=True):
            if result is None:
                item.committed = True
                if item.abandoned:  # its caller was cancelled while this flush wrote it
                    gave_up.append(item)
        if gave_up:
            self._take_back(gave_up)
        if items is batch:
            return results
        outcome = dict(zip(map(id, items), results, strict=True))
        return [outcome[id(item)] if id(item) in outcome else Unavailable("cancelled") for item in batch]

    def _take_back(self, jobs: list[Accepted]) -> None:
        """Withdraw jobs committed for callers that gave up, in the background (drained on stop)."""
        task = asyncio.ensure_future(self.withdraw([job.doc["job_id"] for job in jobs]))
        self._taking_back.add(task)
        task.add_done_callback(self._took_back)

    def _took_back(self, task: asyncio.Task[None]) -> None:
        self._taking_back.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the job stays and runs, though its caller was never answered
            log.warning("could not take back a cancelled submission's job: %s", type(error).__name__)

    async def _enqueue(self, items: list[Accepted]) -> list[int]:
        """Append the entries; the positions (in `items`) of those not appended, already undone."""
        pipe = self._redis.pipeline(transaction=False)
        if self._admission is not None:  # deferred admissions first: before any entry a worker can end
            self._admission.unsent_on(pipe, [item.doc["job_id"] for item in items])
        appends: list[int] = []
        for item in items:
            if self._hot is not None:
                self._hot.put_new_on(pipe, item.doc)
            appends.append(len(pipe.command_stack))
            tokenqueue.append(pipe, item.entry)
        tokenqueue.activate(pipe, [item.entry for item in items])
        try:
            replies = await resp.run(pipe, self._wire)
        except RedisError as exc:
            log.warning("queue append failed: %s", type(exc).__name__)
            failed = list(range(len(items)))
        else:
            activated = all(not isinstance(r, Exception) for r in replies[appends[-1] + 1 :])
            failed = [
                i for i, at in enumerate(appends) if not activated or isinstance(replies[at], Exception)
            ]
        if failed:
            # Nothing was promised yet: undo the documents so the refusal changes nothing.
            ids = [items[i].doc["job_id"] for i in failed]
            try:
                await self._jobs.delete_many({"job_id": {"$in": ids}})
            except PyMongoError as exc:  # the recovery sweep re-enqueues what stays behind
                log.warning("could not undo %d job(s): %s", len(ids), type(exc).__name__)
            if self._hot is not None:
                for job_id in ids:
                    await self._hot.drop(job_id)
        return failed

    async def drain(self) -> None:
        """Write what is pending and wait for writes in flight (graceful shutdown)."""
        for lane in self._lanes:
            await lane.drain()
        while self._taking_back:
            await asyncio.wait(set(self._taking_back))
