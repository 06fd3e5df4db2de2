"""Every write the pipeline relies on reaches the server with `w: majority, j: true`.

Recorded on the wire (a PyMongo command listener) against SecantusDB, through the stores the
services use: the group-committed job insert, the claim and the outcome (whatever batching
JobStore does), a webhook's bookkeeping, a token, an API key. What is no promise (an audit line)
carries no write concern. SecantusDB commits a `j: true` write with a WiredTiger log sync.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from common.apikeys import ApiKeyStore
from common.jobstore import JobStore
from common.mongo import Mongo
from common.tokens import TokenRecord, TokenStore
from common.vault import LocalKeyProvider, Vault

WRITES = {"insert", "update", "delete", "findAndModify"}
DURABLE = {"w": "majority", "j": True, "wtimeout": 10000}


class Writes(CommandListener):
    """(command, collection, writeConcern) of every write command sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any] | None]] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in WRITES:
            concern = event.command.get("writeConcern")
            self.seen.append((event.command_name, str(event.command[event.command_name]), concern))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def _job(job_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "job_id": job_id,
        "user_id": "U",
        "status": "queued",
        "rev": 0,
        "created_at": now,
        "updated_at": now,
    }


async def test_job_token_and_key_writes_are_journaled_before_they_are_acknowledged(
    mongo_url: str, mongo_db_name: str
) -> None:
    writes = Writes()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[writes]
    )
    mongo = Mongo(client, client[mongo_db_name])
    vault = Vault(LocalKeyProvider({1: b"k" * 32}))
    try:
        await mongo.ensure_indexes()
        writes.seen.clear()
        ids = [uuid.uuid4().hex for _ in range(3)]
        await mongo.jobs.insert_many([_job(j) for j in ids], ordered=False)  # the gateway's group commit
        store = JobStore(mongo.jobs)
        for job_id in ids:
            claim = await store.claim(job_id, "worker-1", 0, 30.0, expected_rev=0)
            assert claim is not None
            assert await store.finish(job_id, claim.rev, "completed", result={"ok": 1})
        await store.mark_webhook(ids[0], "delivered", 1, 200)
        record = TokenRecord(
            user_id="U",
            token_id_hash="t" * 32,
            oauth_token="tok",
            oauth_token_secret="sec",
            user_nsid="1@N00",
            username="u",
            perms="read",
        )
        await TokenStore(mongo.tokens, vault).put(record)
        await ApiKeyStore(mongo.api_keys, vault, bcrypt_rounds=10, default_rate_per_min=1000).create(
            "k", ["U"]
        )
        await mongo.audit_log.insert_one({"action": "test", "created_at": datetime.now(UTC)})
    finally:
        await client.drop_database(mongo_db_name)
        await mongo.close()
    durable = [w for w in writes.seen if w[1] != "audit_log"]
    assert {(name, coll) for name, coll, _ in durable} >= {
        ("insert", "jobs"),
        ("update", "jobs"),
        ("update", "tokens"),
        ("insert", "api_keys"),
    }
    assert [w for w in durable if w[2] != DURABLE] == []
    assert [w[2] for w in writes.seen if w[1] == "audit_log"] == [None]


async def test_expiry_takes_a_queued_job_and_never_one_that_has_started(
    mongo_url: str, mongo_db_name: str
) -> None:
    mongo = Mongo.connect(mongo_url, mongo_db_name)
    store = JobStore(mongo.jobs)
    try:
        waiting, started = uuid.uuid4().hex, uuid.uuid4().hex
        await mongo.jobs.insert_many([_job(waiting), _job(started)])
        claim = await store.claim(started, "worker-1", 0, 30.0, expected_rev=0)
        assert claim is not None
        error = {"code": "FLICKR_UNAVAILABLE", "message": "try again"}
        assert await store.schedule_retry(started, claim.rev, error, datetime.now(UTC))
        # A stale copy of each job's first entry (revision 0) arrives after the maximum age.
        assert await store.expire(waiting, 0)
        assert not await store.expire(started, 0)
        states = {d["job_id"]: d["status"] async for d in mongo.jobs.find({})}
        assert states == {waiting: "expired", started: "retrying"}
    finally:
        await mongo.client.drop_database(mongo_db_name)
        await mongo.close()
