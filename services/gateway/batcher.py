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

Two lanes: a token with HEAVY_AT or more submissions in the committer already (a flood) commits in
the bulk lane, every other submission in the light lane, each with its own batches in flight. A
flood then fills the bulk lane's batches and waits for its slots, while another token's job goes
out in the light lane's next batch instead of queueing behind the flood's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Accepted:
    """A job to commit: its document and its queue entry."""

    doc: Doc
    entry: JobEntry


class JobCommitter:
    """Writes accepted jobs in batches; each caller learns whether its own job was committed."""

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        redis: redisio.Redis,
        hot: HotState | None,
        window_ms: float,
        wire: resp.Multiplexed | None = None,
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
        # Admissions deferred to the batch's pipeline (common.admission), when the servicer has one.
        self.admission: Admission | None = None

    async def commit(self, doc: Doc, entry: JobEntry) -> None:
        """Record and enqueue one job; raises Unavailable (nothing left behind) when either store fails."""
        token = entry.token
        open_now = self._open.get(token, 0)
        self._open[token] = open_now + 1
        try:
            await self._lanes[open_now >= HEAVY_AT].submit(Accepted(doc, entry))
        finally:
            if self._open[token] <= 1:
                del self._open[token]
            else:
                self._open[token] -= 1

    async def _flush(self, items: list[Accepted]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(items)
        try:
            await self._jobs.insert_many([item.doc for item in items], ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                results[int(err["index"])] = Unavailable("job store refused the job; retry shortly")
        except PyMongoError as exc:
            log.warning("job insert failed: %s", type(exc).__name__)
            return [Unavailable("job store unavailable; retry shortly")] * len(items)
        written = [i for i, result in enumerate(results) if result is None]
        if written:
            for i in await self._enqueue([items[i] for i in written]):
                results[written[i]] = Unavailable("queue unavailable; retry shortly")
        return results

    async def _enqueue(self, items: list[Accepted]) -> list[int]:
        """Append the entries; the positions (in `items`) of those not appended, already undone."""
        pipe = self._redis.pipeline(transaction=False)
        if self.admission is not None:  # deferred admissions first: before any entry a worker can end
            self.admission.unsent_on(pipe, [item.doc["job_id"] for item in items])
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
