"""What a job's MongoDB writes cost SecantusDB: per index set of `jobs`, journaled or not.

    .venv/bin/python scripts/mongo_write_cost.py [jobs] [rounds]

Starts its own SecantusDB (devstack.stores.secantus) in a temporary folder and, for each
combination of an index set and a write concern, on a fresh collection: inserts `jobs` job
documents in insert_many batches of 50 (the gateway's group commit), then claims and finishes
each one through common.jobstore.JobStore (the worker's two compare-and-sets). It prints the
server's CPU (user + system, from /proc/<pid>/stat) and the wall time per insert, per update and
per job (one insert and two updates), the median of `rounds` rounds run in turn (the machine is
shared: compare the rows of one run).

Index sets: `before` is what `jobs` declared before issue 9's audit (13 indexes), `declared` is
common.mongo.INDEXES today. Write concerns: `w1` (no journal wait, what FlickrHub sent before
issue 9) and `majority` (w: majority, j: true, what it sends now).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, IndexModel, WriteConcern

from common.jobstore import JobStore
from common.mongo import INDEXES, JOBS, Mongo, write_concern
from devstack.stores import mongo_url, secantus

BATCH = 50
TICK = os.sysconf("SC_CLK_TCK")


def _before() -> list[IndexModel]:
    """The `jobs` indexes declared before issue 9's audit."""
    history = [m for m in INDEXES[JOBS] if str(m.document["name"]).endswith("_recent")]
    key_version = [m for m in INDEXES[JOBS] if m.document["name"] == "callback_secret_key_version"]
    return [
        IndexModel([("job_id", ASCENDING)], unique=True, name="job_id_unique"),
        IndexModel([("job_id", ASCENDING), ("rev", ASCENDING)], name="job_revision"),
        IndexModel([("token_id_hash", ASCENDING)], name="token_id_hash"),
        IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="status_lease"),
        IndexModel([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated"),
        IndexModel([("method", ASCENDING)], name="method"),
        IndexModel([("created_at", ASCENDING)], name="created_at"),
        *history,
        *key_version,
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
    ]


INDEX_SETS = {"before": _before(), "declared": INDEXES[JOBS]}
CONCERNS = {"w1": WriteConcern(w=1), "majority": write_concern()}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def job_doc(i: int) -> dict[str, Any]:
    """A job document shaped like the gateway's (gateway.newjob.document)."""
    now = datetime.now(UTC)
    return {
        "job_id": uuid.uuid4().hex,
        "client_id": f"client{i % 5}",
        "user_id": f"user{i % 50}",
        "token_id_hash": f"{i % 50:032x}",
        "method": "flickr.test.echo",
        "params": {"text": "sunset", "page": str(i % 10)},
        "target": "rest",
        "priority": "normal",
        "cache_bypass": False,
        "status": "queued",
        "rev": 0,
        "attempts": 0,
        "max_attempts": 5,
        "callback_url": "",
        "meta_json": "",
        "trace_id": uuid.uuid4().hex,
        "created_at": now,
        "updated_at": now,
    }


async def one(mongo: Mongo, pid: int, models: list[IndexModel], concern: WriteConcern, n: int) -> list[float]:
    """[server CPU ms per insert, per update, wall ms per insert, per update] on a fresh collection."""
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    await mongo.db[name].create_indexes(models)
    jobs = mongo.db.get_collection(name, write_concern=concern)
    store = JobStore(jobs)
    docs = [job_doc(i) for i in range(n)]
    c0, t0 = cpu_s(pid), time.perf_counter()
    for start in range(0, n, BATCH):
        await jobs.insert_many(docs[start : start + BATCH], ordered=False)
    c1, t1 = cpu_s(pid), time.perf_counter()
    for doc in docs:
        claim = await store.claim(doc["job_id"], "worker-1", 0, 48.0, expected_rev=0)
        assert claim is not None
        assert await store.finish(doc["job_id"], claim.rev, "completed", result={"stat": "ok"})
    c2, t2 = cpu_s(pid), time.perf_counter()
    await mongo.db.drop_collection(name)
    return [(c1 - c0) / n * 1e3, (c2 - c1) / (2 * n) * 1e3, (t1 - t0) / n * 1e3, (t2 - t1) / (2 * n) * 1e3]


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mongo-write-cost-") as tmp:
        server = secantus(Path(tmp)).start(timeout=60)
        assert server.proc is not None
        mongo = Mongo.connect(mongo_url(server.port), "cost")
        results: dict[tuple[str, str], list[list[float]]] = {}
        try:
            for _ in range(rounds):
                for set_name, models in INDEX_SETS.items():
                    for wc_name, concern in CONCERNS.items():
                        row = await one(mongo, server.proc.pid, models, concern, n)
                        results.setdefault((set_name, wc_name), []).append(row)
        finally:
            await mongo.close()
            server.stop()
    print(f"{n} jobs x {rounds} rounds, medians; server CPU and wall in ms")
    print("indexes   (n)  concern   cpu/insert cpu/update cpu/job   wall/insert wall/update")
    for (set_name, wc_name), rows in results.items():
        ins, upd, w_ins, w_upd = (statistics.median(r[k] for r in rows) for k in range(4))
        count = len(INDEX_SETS[set_name])
        print(
            f"{set_name:9s} ({count:2d}) {wc_name:9s} {ins:9.3f} {upd:10.3f} {ins + 2 * upd:8.3f}"
            f"   {w_ins:10.3f} {w_upd:10.3f}"
        )


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    )
