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
from pymongo.errors import DuplicateKeyError

from cli import archiver as archive
from cli.rotation import SECRETS, page_query, version_query
from common import blobs, blobsweep, recovery
from common.mongo import HISTORY_INDEXES, INDEXES, RETIRED_INDEXES, Mongo
from gateway import auth_requests
from gateway import history_query as history

T = datetime(2026, 1, 1, tzinfo=UTC)
NEWEST_FIRST = history.NEWEST_FIRST
Case = tuple[str, str, dict[str, Any], list[tuple[str, int]] | None]

# Collections one service uses declare their own indexes (the gateway's, the CLI's).
OWN_INDEXES = {**auth_requests.INDEXES, **archive.INDEXES}
ALL_INDEXES = {**INDEXES, **OWN_INDEXES}


def _history_cases() -> list[Case]:
    """ListJobs: every combination of its filters and of its created_at range (time window, cursor).

    A page runs one or two filters (history.range_filters: the rest of the cursor's millisecond,
    then older rows); `method` is filtered while walking, so it never reaches a filter.
    """
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
        for i, found in enumerate(history.range_filters(query)):
            assert "method" not in found, label
            cases.append((f"{label} filter {i}", "jobs", found, NEWEST_FIRST))
    return cases


CASES: list[Case] = [
    # common.jobstore: reads by id, compare-and-set transitions (one by one or a turn's bulk write, and
    # the re-read that tells its winners), webhook bookkeeping.
    ("JobStore.get/claim/_transition/mark_webhook", "jobs", {"job_id": "J"}, None),
    ("JobStore._cas", "jobs", {"job_id": "J", "rev": 3}, None),
    ("JobStore._write_all re-read", "jobs", {"job_id": {"$in": ["J1", "J2"]}}, None),
    # gateway.acceptance: duplicate answers; gateway.batcher: the rollback of a refused enqueue, and
    # taking back jobs whose caller failed or gave up (only a job still at its first revision).
    ("Acceptance.responses", "jobs", {"job_id": {"$in": ["J1", "J2"]}}, None),
    ("JobCommitter._enqueue rollback", "jobs", {"job_id": {"$in": ["J1", "J2"]}}, None),
    ("JobCommitter.withdraw", "jobs", {"job_id": "J", "rev": 0}, None),
    # common.recovery: candidates per live state, then a re-read by id.
    *((f"recovery candidates {i}", "jobs", q, None) for i, q in enumerate(recovery.candidate_filters(T))),
    ("recovery recheck", "jobs", recovery.recheck_filter(["J1", "J2"]), None),
    # gateway.history: ListJobs.
    *_history_cases(),
    # cli.archiver: the next day to archive, one day's jobs, the record of a file, a restored line.
    (
        "archive next day",
        "jobs",
        archive.pending_filter(T, datetime(2026, 3, 1, tzinfo=UTC)),
        [("created_at", 1)],
    ),
    ("archive one day", "jobs", archive.day_filter(T), [("created_at", 1)]),
    ("archive record", "archives", archive.name_filter("jobs-2026-01-01.jsonl.zst"), None),
    ("restore upsert", "jobs", archive.restore_filter("J"), None),
    # common.tokens: get/summary/upsert/revoke, a token's owner, the paged list (first page and the next).
    ("TokenStore by user", "tokens", {"user_id": "U"}, None),
    ("TokenStore by token", "tokens", {"token_id_hash": "T"}, None),
    ("TokenStore.list next", "tokens", {"user_id": {"$gt": "U"}}, [("user_id", 1)]),
    ("TokenStore.list first", "tokens", {}, [("user_id", 1)]),
    # common.apikeys: find/revoke, rotate (live keys only), the paged list, last-used touches.
    ("ApiKeyStore.find/revoke", "api_keys", {"key_id": "K"}, None),
    ("ApiKeyStore.rotate", "api_keys", {"key_id": "K", "revoked": False}, None),
    ("ApiKeyStore.list next", "api_keys", {"key_id": {"$gt": "K"}}, [("key_id", 1)]),
    ("ApiKeyStore.list first", "api_keys", {}, [("key_id", 1)]),
    ("ApiKeyStore.touch; devstack seed", "api_keys", {"key_id": {"$in": ["K1", "K2"]}}, None),
    # gateway.auth_requests: claim (read, then guarded update), release and complete.
    ("AuthRequests.claim read", "auth_requests", {"request_id_hash": "R"}, None),
    ("AuthRequests.claim", "auth_requests", {"request_id_hash": "R", "state": "pending", "claim": ""}, None),
    ("AuthRequests.release/complete", "auth_requests", {"request_id_hash": "R", "claim": "c"}, None),
    # common.blobs (and PyMongo's GridFS download stream it reads through).
    ("BlobStore.info/delete", f"{blobs.BUCKET}.files", {"_id": ObjectId()}, None),
    ("BlobStore.delete chunks", f"{blobs.BUCKET}.chunks", {"files_id": ObjectId()}, None),
    ("GridFS read chunks", f"{blobs.BUCKET}.chunks", {"files_id": ObjectId(), "n": {"$gte": 0}}, [("n", 1)]),
    # common.blobsweep: old blobs (their first chunks), their file documents, the jobs they were written for.
    ("blobsweep candidates", blobsweep.CHUNKS, blobsweep.candidate_filter(T), None),
    ("blobsweep files", blobsweep.FILES, blobsweep.files_filter([ObjectId(), ObjectId()]), None),
    ("blobsweep owners", "jobs", blobsweep.owners_filter(["J1", "J2"]), None),
]


# Declared indexes no query of the code walks, and why each is kept anyway. Every other declared index
# must be the winning plan of some audited query (test_every_declared_index_serves_a_query): on
# SecantusDB each index costs every insert and every update of its collection.
KEPT_WITHOUT_A_QUERY = {
    # GridFS's own index (the spec's name), which PyMongo's GridFS writer looks for.
    (f"{blobs.BUCKET}.files", "filename_1_uploadDate_1"),
}


def _ttl(collection: str, name: str) -> bool:
    """A TTL index: the server's TTL monitor reads it, not a query."""
    spec = next(m.document for m in ALL_INDEXES[collection] if m.document["name"] == name)
    return "expireAfterSeconds" in spec


def _stages(plan: Any, field: str = "stage") -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if field in plan:
            found.add(str(plan[field]))
        for value in plan.values():
            found |= _stages(value, field)
    elif isinstance(plan, list):
        for value in plan:
            found |= _stages(value, field)
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
        # Vault blobs on key versions 1 and 2, in every field key rotation walks.
        **{name: {"v": 1 + i % 2, "n": uuid.uuid4().hex} for spec in SECRETS for name in spec.fields},
    }


async def _plans(mongo_url: str, db_name: str, cases: list[Case]) -> dict[str, Any]:
    """Each case's winning plan."""
    mongo = Mongo.connect(mongo_url, db_name)
    try:
        await mongo.ensure_indexes(OWN_INDEXES)
        for collection in {c for _, c, _, _ in cases}:
            await mongo.db[collection].insert_many([_filler(i) for i in range(200)])
        out = {}
        for label, collection, query, sort in cases:
            cursor = mongo.db[collection].find(query)
            if sort:
                cursor = cursor.sort(sort)
            out[label] = (await cursor.explain())["queryPlanner"]["winningPlan"]
        return out
    finally:
        await mongo.client.drop_database(db_name)
        await mongo.close()


async def test_every_query_the_code_runs_uses_an_index(mongo_url: str, mongo_db_name: str) -> None:
    plans = {label: _stages(plan) for label, plan in (await _plans(mongo_url, mongo_db_name, CASES)).items()}
    scans = {label: sorted(stages) for label, stages in plans.items() if "COLLSCAN" in stages}
    unindexed = {label: sorted(stages) for label, stages in plans.items() if "IXSCAN" not in stages}
    assert not scans and not unindexed, {**scans, **unindexed}
    # 8 combinations of client, state and method x 7 windows; the 2 windows with a cursor inside
    # them run a second filter (the rest of the cursor's millisecond).
    assert len([label for label in plans if label.startswith("ListJobs")]) == 8 * (7 + 2)


async def test_every_history_page_walks_a_history_index(mongo_url: str, mongo_db_name: str) -> None:
    """ListJobs filters are answered by an index that ends in the page order, not any index that fits."""
    cases = [case for case in CASES if case[0].startswith("ListJobs")]
    plans = await _plans(mongo_url, mongo_db_name, cases)
    used = {label: _stages(plan, "indexName") for label, plan in plans.items()}
    assert all(names and names <= set(HISTORY_INDEXES) for names in used.values()), used
    assert set().union(*used.values()) == set(HISTORY_INDEXES)  # and each of them serves some filter


async def test_every_declared_index_serves_a_query(mongo_url: str, mongo_db_name: str) -> None:
    """An index no audited query walks fails here: drop it (mongo.RETIRED_INDEXES) or audit its query.

    Inserts and updates pay for every index, so each declared one must be the plan of a query in
    CASES (or key rotation's), TTL indexes and KEPT_WITHOUT_A_QUERY aside.
    """
    cases = CASES + _rotation_cases()
    plans = await _plans(mongo_url, mongo_db_name, cases)
    used = {
        (collection, name)
        for (label, collection, _, _) in cases
        for name in _stages(plans[label], "indexName")
    }
    declared = {
        (collection, str(m.document["name"])) for collection, models in ALL_INDEXES.items() for m in models
    }
    unused = sorted(
        (c, n) for c, n in declared - used - KEPT_WITHOUT_A_QUERY if n != "_id_" and not _ttl(c, n)
    )
    assert not unused, f"declared indexes no audited query walks: {unused}"
    assert declared - used >= KEPT_WITHOUT_A_QUERY  # an exemption that became used leaves the list
    # `jobs`, the collection every job writes three times: every index but TTL's is some query's plan.
    jobs_declared = {n for c, n in declared if c == "jobs"}
    assert {n for c, n in used if c == "jobs"} == jobs_declared - {"expire_at_ttl"}
    assert len(jobs_declared) == 9  # 13 before issue 9's audit (+ `_id`)


async def test_the_orphan_blob_sweep_walks_one_entry_per_blob(mongo_url: str, mongo_db_name: str) -> None:
    """Its candidates come from the partial first-chunk index, not from every chunk of every blob."""
    cases = [case for case in CASES if case[0] == "blobsweep candidates"]
    plans = await _plans(mongo_url, mongo_db_name, cases)
    assert _stages(plans["blobsweep candidates"], "indexName") == {"first_chunk"}


def _rotation_cases() -> list[Case]:
    """cli.rotation: per encrypted field, the next key version (from the start, past the current
    one), then one version's first page and a next page by `_id`; counting what is left runs the same."""
    cases: list[Case] = []
    for spec in SECRETS:
        for name in spec.fields:
            queries = {
                "first version": version_query(name, 0),
                "next version": version_query(name, 2),
                "first page": page_query(name, 1),
                "next page": page_query(name, 1, ObjectId()),
            }
            for what, (found, order) in queries.items():
                cases.append((f"rotation {spec.collection}.{name} {what}", spec.collection, found, order))
    return cases


async def test_vault_rotation_queries_use_an_index(mongo_url: str, mongo_db_name: str) -> None:
    cases = _rotation_cases()
    plans = await _plans(mongo_url, mongo_db_name, cases)
    used = {label: (_stages(plan), _stages(plan, "indexName")) for label, plan in plans.items()}
    # Each walks its own field's key-version index, never the collection.
    wrong = {
        label: (sorted(stages), sorted(names))
        for (label, _, found, _), (stages, names) in zip(cases, used.values(), strict=True)
        if "COLLSCAN" in stages
        or "IXSCAN" not in stages
        or names != {next(iter(found)).removesuffix(".v") + "_key_version"}
    }
    assert not wrong, wrong
    assert len(cases) == 4 * sum(len(spec.fields) for spec in SECRETS)


async def test_indexes_are_created_idempotently_and_match_the_declaration(
    mongo_url: str, mongo_db_name: str
) -> None:
    mongo = Mongo.connect(mongo_url, mongo_db_name)
    try:
        # A database an earlier release indexed: what it declared and this one does not is dropped.
        await mongo.jobs.create_index([("client_id", 1)], name="client_id")
        await mongo.jobs.create_index(
            [("user_id", 1), ("method", 1), ("created_at", -1), ("job_id", -1)], name="user_method_recent"
        )
        # Issue 9's audit retired these (the release before it declared every one).
        await mongo.jobs.create_index([("job_id", 1)], unique=True, name="job_id_unique")
        await mongo.jobs.create_index([("job_id", 1), ("rev", 1)], name="job_revision")
        await mongo.jobs.create_index([("token_id_hash", 1)], name="token_id_hash")
        await mongo.jobs.create_index([("method", 1)], name="method")
        await mongo.jobs.create_index([("status", 1), ("lease_until", 1)], name="status_lease")
        await mongo.jobs.create_index([("expire_at", 1)], expireAfterSeconds=0, name="retention_ttl")
        await mongo.jobs.insert_one({"job_id": "J", "rev": 0})
        await mongo.ensure_indexes(OWN_INDEXES)
        await mongo.ensure_indexes(OWN_INDEXES)  # a second start changes nothing and raises nothing
        for collection, models in ALL_INDEXES.items():
            held = {ix["name"]: ix async for ix in await mongo.db[collection].list_indexes()}
            for model in models:
                spec = model.document
                assert spec["name"] in held, (collection, spec["name"])
                assert dict(held[spec["name"]]["key"]) == dict(spec["key"]), (collection, spec["name"])
                assert held[spec["name"]].get("expireAfterSeconds") == spec.get("expireAfterSeconds")
        jobs = {ix["name"]: ix async for ix in await mongo.jobs.list_indexes()}
        assert not set(jobs) & set(RETIRED_INDEXES["jobs"]), sorted(jobs)
        # Job ids unique (per revision: every document is inserted at revision 0), an index led by each
        # looked-up field, one TTL on expire_at holding only the jobs that have one.
        assert jobs["job_id_rev_unique"].get("unique") is True
        assert dict(jobs["job_id_rev_unique"]["key"]) == {"job_id": 1, "rev": -1}
        with pytest.raises(DuplicateKeyError):
            await mongo.jobs.insert_one({"job_id": "J", "rev": 0})
        leading = {next(iter(dict(ix["key"]))) for ix in jobs.values()}
        assert {"job_id", "status", "client_id", "user_id", "created_at", "expire_at"} <= leading
        assert [n for n, ix in jobs.items() if "expireAfterSeconds" in ix] == ["expire_at_ttl"]
        assert dict(jobs["expire_at_ttl"]["key"]) == {"expire_at": 1}
        assert jobs["expire_at_ttl"]["partialFilterExpression"] == {"expire_at": {"$exists": True}}
        audit = {ix["name"]: ix async for ix in await mongo.audit_log.list_indexes()}
        assert audit["retention_ttl"]["expireAfterSeconds"] == 365 * 24 * 3600
    finally:
        await mongo.client.drop_database(mongo_db_name)
        await mongo.close()
