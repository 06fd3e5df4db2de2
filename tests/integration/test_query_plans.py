"""Every query the code runs is planned on an index: explain() shows an index scan, never a collection scan.

The list below is the audit of every find / update / delete / count filter in services/ and libs/
(`grep -rn "find\\|_one(\\|_many(\\|count_documents\\|aggregate" services libs`), each built by the
code that runs it where that code exposes its filter, else copied with the place it comes from.
Inserts need no plan. SecantusDB plans an index only when the filter is equalities on an index's
leading fields plus at most one range on the next one, and never for a top-level `$or`.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId

from common import archive, blobs, history, recovery
from common.mongo import INDEXES, Mongo
from common.rotation import SECRETS, _stale_query

T = datetime(2026, 1, 1, tzinfo=UTC)
NEWEST_FIRST = history.NEWEST_FIRST
Case = tuple[str, str, dict[str, Any], list[tuple[str, int]] | None]


def _history_cases() -> list[Case]:
    """ListJobs: every combination of its equalities and of its created_at range (time window, cursor)."""
    windows: list[dict[str, Any]] = [
        {},
        {"created_after": T},
        {"created_before": T},
        {"created_after": T, "created_before": datetime(2026, 2, 1, tzinfo=UTC)},
        {"after": (T, "J")},
        {"created_after": datetime(2025, 1, 1, tzinfo=UTC), "after": (T, "J")},
        {"created_before": datetime(2025, 1, 1, tzinfo=UTC), "after": (T, "J")},
    ]
    cases: list[Case] = []
    for client, state, method, window in itertools.product(
        (None, "C"), (None, "completed"), (None, "flickr.photos.search"), windows
    ):
        query = history.JobQuery(user_id="U", client_id=client, state=state, method=method, **window)
        label = f"ListJobs client={client} state={state} method={method} window={sorted(window)}"
        cases.append((label, "jobs", history.list_filter(query), NEWEST_FIRST))
    return cases


CASES: list[Case] = [
    # common.jobstore: reads by id, compare-and-set transitions, webhook bookkeeping.
    ("JobStore.get/claim/_transition/mark_webhook", "jobs", {"job_id": "J"}, None),
    ("JobStore._cas", "jobs", {"job_id": "J", "rev": 3}, None),
    # gateway.jobs_servicer: duplicate answers, the rollback of a refused enqueue.
    ("JobServicer.responses", "jobs", {"job_id": {"$in": ["J1", "J2"]}}, None),
    ("JobServicer._enqueue rollback", "jobs", {"job_id": "J"}, None),
    # gateway.batch rollback; gateway.uploads rollback (only a job still at its first revision).
    ("batch._write rollback", "jobs", {"job_id": {"$in": ["J1", "J2"]}}, None),
    ("uploads.accept rollback", "jobs", {"job_id": "J", "rev": 0}, None),
    # common.recovery: candidates per live state, then a re-read by id.
    *((f"recovery candidates {i}", "jobs", q, None) for i, q in enumerate(recovery.candidate_filters(T))),
    ("recovery recheck", "jobs", recovery.recheck_filter(["J1", "J2"]), None),
    # gateway.history: ListJobs.
    *_history_cases(),
    # common.archive: the next day to archive, one day's jobs, the record of a file, a restored line.
    (
        "archive next day",
        "jobs",
        archive.pending_filter(T, datetime(2026, 3, 1, tzinfo=UTC)),
        [("created_at", 1)],
    ),
    ("archive one day", "jobs", archive.day_filter(T), [("created_at", 1)]),
    ("archive record", "archives", archive.name_filter("jobs-2026-01-01.jsonl.zst"), None),
    ("restore upsert", "jobs", archive.restore_filter("J"), None),
    # common.tokens: get/summary/upsert/revoke, the paged list (first page and the next).
    ("TokenStore by user", "tokens", {"user_id": "U"}, None),
    ("TokenStore.list next", "tokens", {"user_id": {"$gt": "U"}}, [("user_id", 1)]),
    ("TokenStore.list first", "tokens", {}, [("user_id", 1)]),
    # common.apikeys: find/revoke, rotate (live keys only), the paged list, last-used touches.
    ("ApiKeyStore.find/revoke", "api_keys", {"key_id": "K"}, None),
    ("ApiKeyStore.rotate", "api_keys", {"key_id": "K", "revoked": False}, None),
    ("ApiKeyStore.list next", "api_keys", {"key_id": {"$gt": "K"}}, [("key_id", 1)]),
    ("ApiKeyStore.list first", "api_keys", {}, [("key_id", 1)]),
    ("ApiKeyStore.touch; devstack seed", "api_keys", {"key_id": {"$in": ["K1", "K2"]}}, None),
    # common.auth_requests: claim (read, then guarded update), release and complete.
    ("AuthRequests.claim read", "auth_requests", {"request_id_hash": "R"}, None),
    ("AuthRequests.claim", "auth_requests", {"request_id_hash": "R", "state": "pending", "claim": ""}, None),
    ("AuthRequests.release/complete", "auth_requests", {"request_id_hash": "R", "claim": "c"}, None),
    # common.blobs (and PyMongo's GridFS download stream it reads through).
    ("BlobStore.info/delete", f"{blobs.BUCKET}.files", {"_id": ObjectId()}, None),
    ("BlobStore.delete chunks", f"{blobs.BUCKET}.chunks", {"files_id": ObjectId()}, None),
    ("GridFS read chunks", f"{blobs.BUCKET}.chunks", {"files_id": ObjectId(), "n": {"$gte": 0}}, [("n", 1)]),
]


def _stages(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "stage" in plan:
            found.add(str(plan["stage"]))
        for value in plan.values():
            found |= _stages(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _stages(value)
    return found


def _filler(i: int) -> dict[str, Any]:
    """A document with every field the filters name, so no plan is decided by an empty collection."""
    return {
        "job_id": uuid.uuid4().hex,
        "user_id": f"u{i}",
        "client_id": f"c{i % 3}",
        "status": ("queued", "running", "completed")[i % 3],
        "method": "flickr.test.echo",
        "rev": i % 4,
        "created_at": T,
        "updated_at": T,
        "lease_until": T,
        "key_id": uuid.uuid4().hex,
        "revoked": False,
        "request_id_hash": uuid.uuid4().hex,
        "claim": "",
        "state": "pending",
        "name": uuid.uuid4().hex,
        "files_id": ObjectId(),
        "n": i,
    }


async def _plans(mongo_url: str, db_name: str, cases: list[Case]) -> dict[str, set[str]]:
    mongo = Mongo.connect(mongo_url, db_name)
    try:
        await mongo.ensure_indexes()
        for collection in {c for _, c, _, _ in cases}:
            await mongo.db[collection].insert_many([_filler(i) for i in range(200)])
        out = {}
        for label, collection, query, sort in cases:
            cursor = mongo.db[collection].find(query)
            if sort:
                cursor = cursor.sort(sort)
            out[label] = _stages((await cursor.explain())["queryPlanner"]["winningPlan"])
        return out
    finally:
        await mongo.client.drop_database(db_name)
        await mongo.close()


async def test_every_query_the_code_runs_uses_an_index(mongo_url: str, mongo_db_name: str) -> None:
    plans = await _plans(mongo_url, mongo_db_name, CASES)
    scans = {label: sorted(stages) for label, stages in plans.items() if "COLLSCAN" in stages}
    unindexed = {label: sorted(stages) for label, stages in plans.items() if "IXSCAN" not in stages}
    assert not scans and not unindexed, {**scans, **unindexed}
    assert len([label for label in plans if label.startswith("ListJobs")]) == 56


@pytest.mark.xfail(
    strict=True,
    reason="vault rotation (common.rotation) finds stale secrets with a top-level $or, which "
    "SecantusDB always scans; an operator job, left to its owner",
)
async def test_vault_rotation_queries_use_an_index(mongo_url: str, mongo_db_name: str) -> None:
    cases: list[Case] = [
        (f"rotation {spec.collection}", spec.collection, _stale_query(spec, 2), [("_id", 1)])
        for spec in SECRETS
    ]
    plans = await _plans(mongo_url, mongo_db_name, cases)
    assert all("COLLSCAN" not in stages for stages in plans.values()), plans


async def test_indexes_are_created_idempotently_and_match_the_declaration(
    mongo_url: str, mongo_db_name: str
) -> None:
    mongo = Mongo.connect(mongo_url, mongo_db_name)
    try:
        await mongo.ensure_indexes()
        await mongo.ensure_indexes()  # a second start changes nothing and raises nothing
        for collection, models in INDEXES.items():
            held = {ix["name"]: ix async for ix in await mongo.db[collection].list_indexes()}
            for model in models:
                spec = model.document
                assert spec["name"] in held, (collection, spec["name"])
                assert dict(held[spec["name"]]["key"]) == dict(spec["key"]), (collection, spec["name"])
                assert held[spec["name"]].get("expireAfterSeconds") == spec.get("expireAfterSeconds")
        jobs = {ix["name"]: ix async for ix in await mongo.jobs.list_indexes()}
        # Issue 6's schema: job_id unique, the single-field lookups, one TTL on expire_at.
        assert jobs["job_id_unique"].get("unique") is True
        for name in ("token_id_hash", "method", "client_id", "created_at"):
            assert name in jobs
        assert [n for n, ix in jobs.items() if "expireAfterSeconds" in ix] == ["retention_ttl"]
        assert dict(jobs["retention_ttl"]["key"]) == {"expire_at": 1}
        audit = {ix["name"]: ix async for ix in await mongo.audit_log.list_indexes()}
        assert audit["retention_ttl"]["expireAfterSeconds"] == 365 * 24 * 3600
    finally:
        await mongo.client.drop_database(mongo_db_name)
        await mongo.close()
