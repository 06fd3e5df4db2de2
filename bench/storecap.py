"""The MongoDB stand-in's own write capacity, measured on the server the run just used.

A job costs the store one share of a batched insert (the gateway's group commit) and two
guarded updates (the worker's claim and outcome). Here the same server takes exactly that,
with nothing else running: `insert_many` batches of job documents (a copy of a real job
document of the run) into a collection with the same indexes as `jobs`, then a claim-shaped
and an outcome-shaped `update_one` per document (filter on job_id and revision, $set, $inc),
all with the write concern the services use (MONGO_WRITE_CONCERN; j:true where the setting
does not exist yet). The bound is the jobs/s those writes alone allow:
1 / (1/inserts_per_s + 2/updates_per_s).
"""

from __future__ import annotations

import copy
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.write_concern import WriteConcern

DB = "bench_store_capacity"
INSERT_THREADS = 2
UPDATE_THREADS = 8
CONCERNS = {
    "majority": WriteConcern(w="majority", j=True),
    "journaled": WriteConcern(w=1, j=True),
    "unjournaled": WriteConcern(w=1),
}


def _template(client: MongoClient[dict[str, Any]], db: str) -> dict[str, Any]:
    doc = client[db]["jobs"].find_one({"status": "completed"}) or client[db]["jobs"].find_one()
    if doc is None:
        raise RuntimeError("no job document to copy: run jobs first")
    doc.pop("_id", None)
    return doc


def _copy_indexes(client: MongoClient[dict[str, Any]], db: str, target: Collection[dict[str, Any]]) -> int:
    n = 0
    for spec in client[db]["jobs"].list_indexes():
        if spec["name"] == "_id_":
            continue
        options = {k: v for k, v in spec.items() if k not in ("v", "key", "ns")}
        target.create_index(list(spec["key"].items()), **options)
        n += 1
    return n


def measure(
    mongo_url: str, jobs_db: str, docs: int, batch: int = 50, concern: str = "journaled"
) -> dict[str, Any]:
    """insert_many and update_one rates at `mongo_url` under `concern`, and the jobs/s they allow."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        template = _template(client, jobs_db)
        client.drop_database(DB)
        coll = client[DB].get_collection("jobs", write_concern=CONCERNS[concern])
        indexes = _copy_indexes(client, jobs_db, coll)
        ids = [uuid.uuid4().hex for _ in range(docs)]

        def doc(job_id: str) -> dict[str, Any]:
            d = copy.deepcopy(template)
            d.update(job_id=job_id, status="queued", rev=0, trace_id=uuid.uuid4().hex)
            return d

        batches = [[doc(j) for j in ids[i : i + batch]] for i in range(0, docs, batch)]
        with ThreadPoolExecutor(INSERT_THREADS) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda b: coll.insert_many(b, ordered=False), batches))
            inserts_per_s = docs / (time.perf_counter() - t0)

        result = template.get("result")

        def claim(job_id: str) -> None:
            now = datetime.now(UTC)
            coll.update_one(
                {"job_id": job_id, "rev": 0},
                {"$set": {"status": "running", "started_at": now, "updated_at": now}, "$inc": {"rev": 1}},
            )

        def outcome(job_id: str) -> None:
            now = datetime.now(UTC)
            coll.update_one(
                {"job_id": job_id, "rev": 1},
                {
                    "$set": {"status": "completed", "result": result, "finished_at": now, "updated_at": now},
                    "$inc": {"rev": 1},
                },
            )

        with ThreadPoolExecutor(UPDATE_THREADS) as pool:
            t0 = time.perf_counter()
            list(pool.map(claim, ids))
            list(pool.map(outcome, ids))
            updates_per_s = 2 * docs / (time.perf_counter() - t0)
        done = coll.count_documents({"status": "completed"})
        client.drop_database(DB)
    finally:
        client.close()
    wc = CONCERNS[concern].document
    if done != docs:
        raise RuntimeError(f"store capacity: {done} of {docs} documents reached their outcome")
    return {
        "documents": docs,
        "insert_batch": batch,
        "insert_threads": INSERT_THREADS,
        "update_threads": UPDATE_THREADS,
        "indexes_on_jobs": indexes,
        "write_concern": f"{concern} ({', '.join(f'{k}:{v}' for k, v in wc.items())})",
        "insert_docs_per_s": round(inserts_per_s, 1),
        "updates_per_s": round(updates_per_s, 1),
        "jobs_per_s_bound": round(1 / (1 / inserts_per_s + 2 / updates_per_s), 1),
    }
