"""MongoDB: the client, the collections and the indexes FlickrHub declares in code.

Indexes and retention are applied at start (idempotently) by every service
that writes. The job document is the source of truth for every accepted job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from common import blobs

Doc = dict[str, Any]

JOBS = "jobs"
TOKENS = "tokens"
API_KEYS = "api_keys"
AUDIT_LOG = "audit_log"
AUTH_REQUESTS = "auth_requests"

INDEX_NOT_FOUND = 27  # MongoDB's IndexNotFound error code

AUDIT_RETENTION_S = 365 * 24 * 3600
# Archives written by `flickrhub archive` (common.archive), one document per archived day.
ARCHIVES = "archives"


def _history_indexes() -> list[IndexModel]:
    """(client_id?, user_id, status?, created_at desc, job_id desc), for each choice of the ?.

    Four, not one per ListJobs filter: `method` is applied by common.history while it walks one of
    these in page order. Each index costs every job insert and (on SecantusDB, which rewrites every
    entry of a document on any update) every state transition.
    """
    models = []
    for client in (False, True):
        for state in (False, True):
            fields = ["client_id"] * client + ["user_id"] + ["status"] * state
            name = "_".join(["client"] * client + ["user"] + ["state"] * state)
            keys = [(f, ASCENDING) for f in fields] + [("created_at", DESCENDING), ("job_id", DESCENDING)]
            models.append(IndexModel(keys, name=f"{name}_recent"))
    return models


def _key_version_index(field: str) -> IndexModel:
    """(field.v, _id): key rotation (common.rotation) finds each old key version of an encrypted field
    here, then walks that version's records in `_id` pages: equality, then a range, on one index.

    Partial on `v > 0` (every key version is >= 1), so records without the secret hold no entry;
    each rotation query names a `v` bound that implies it.
    """
    return IndexModel(
        [(f"{field}.v", ASCENDING), ("_id", ASCENDING)],
        name=f"{field}_key_version",
        partialFilterExpression={f"{field}.v": {"$gt": 0}},
    )


# The ListJobs indexes, by name (tests check every history query walks one of them).
HISTORY_INDEXES = tuple(str(m.document["name"]) for m in _history_indexes())


INDEXES: dict[str, list[IndexModel]] = {
    JOBS: [
        IndexModel([("job_id", ASCENDING)], unique=True, name="job_id_unique"),
        # Every state transition is a compare-and-set filtered on exactly these two fields.
        IndexModel([("job_id", ASCENDING), ("rev", ASCENDING)], name="job_revision"),
        IndexModel([("token_id_hash", ASCENDING)], name="token_id_hash"),
        # Recovery (common.recovery): running jobs whose lease ran out, and live jobs untouched for long.
        IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="status_lease"),
        IndexModel([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated"),
        IndexModel([("method", ASCENDING)], name="method"),
        # `client_id` lookups lead with client_user_recent (below); a single-field index would be a copy.
        # Archival walks whole days of jobs by creation time (common.archive).
        IndexModel([("created_at", ASCENDING)], name="created_at"),
        # Job history (common.history): one index per combination of the ListJobs equalities that
        # narrow most (client, state), each ending in the page order, so every page walks one index
        # range in order; `method` is filtered while walking.
        *_history_indexes(),
        # Key rotation looks for secrets on old key versions; only jobs with a webhook have one.
        _key_version_index("callback_secret"),
        # Each job gets expire_at from its final state; live jobs have none and never expire.
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
    ],
    TOKENS: [
        IndexModel([("user_id", ASCENDING)], unique=True, name="user_id_unique"),
        IndexModel([("token_id_hash", ASCENDING)], name="token_id_hash"),
        _key_version_index("oauth_token"),
        _key_version_index("oauth_token_secret"),
    ],
    API_KEYS: [
        IndexModel([("key_id", ASCENDING)], unique=True, name="key_id_unique"),
        # Rotation updates a key only while it is live: its filter names both fields.
        IndexModel([("key_id", ASCENDING), ("revoked", ASCENDING)], name="key_id_revoked"),
        _key_version_index("signing_secret"),
    ],
    # Pending OAuth authorizations, found by the hash of their request token; purged after expire_at.
    AUTH_REQUESTS: [
        IndexModel([("request_id_hash", ASCENDING)], unique=True, name="request_id_hash_unique"),
        # Claims and their release are updates guarded by the claim read (and the state) as well.
        IndexModel(
            [("request_id_hash", ASCENDING), ("claim", ASCENDING), ("state", ASCENDING)], name="request_claim"
        ),
        _key_version_index("secret"),
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
    ],
    AUDIT_LOG: [
        IndexModel([("created_at", ASCENDING)], expireAfterSeconds=AUDIT_RETENTION_S, name="retention_ttl")
    ],
    ARCHIVES: [IndexModel([("name", ASCENDING)], unique=True, name="name_unique")],
}
# The GridFS bucket holding upload photos until their job ends.
INDEXES.update(blobs.INDEXES)

# Indexes an earlier FlickrHub declared and this one does not: dropped at start where they exist,
# since an index nobody reads still costs every write.
RETIRED_INDEXES: dict[str, tuple[str, ...]] = {
    JOBS: (
        "client_id",  # led by client_user_recent now
        # ListJobs once had one index per filter combination, `method` included; it filters method itself now.
        "user_method_recent",
        "user_state_method_recent",
        "client_user_method_recent",
        "client_user_state_method_recent",
        "callback_key_version",  # on callback_secret.v alone: now callback_secret_key_version
    ),
    TOKENS: ("key_version",),  # on oauth_token.v alone: now oauth_token_key_version
}


@dataclass
class Mongo:
    """An AsyncMongoClient and FlickrHub's database."""

    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]

    @classmethod
    def connect(cls, url: str, db_name: str) -> Mongo:
        """Connect lazily (the first operation dials); datetimes come back timezone-aware."""
        # Every call has a deadline: a reply that never comes fails (and is retried) instead of hanging a job.
        defaults = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 3000, "socketTimeoutMS": 15000}
        options: dict[str, Any] = {
            k: v for k, v in defaults.items() if k.lower() not in url.lower()
        }  # URI wins
        client: AsyncMongoClient[Doc] = AsyncMongoClient(url, tz_aware=True, appname="flickrhub", **options)
        return cls(client, client[db_name])

    @property
    def jobs(self) -> AsyncCollection[Doc]:
        """The `jobs` collection."""
        return self.db[JOBS]

    @property
    def tokens(self) -> AsyncCollection[Doc]:
        """The `tokens` collection."""
        return self.db[TOKENS]

    @property
    def auth_requests(self) -> AsyncCollection[Doc]:
        """The `auth_requests` collection (pending OAuth authorizations)."""
        return self.db[AUTH_REQUESTS]

    @property
    def api_keys(self) -> AsyncCollection[Doc]:
        """The `api_keys` collection (bcrypt hashes and vault blobs, never a clear secret)."""
        return self.db[API_KEYS]

    @property
    def archives(self) -> AsyncCollection[Doc]:
        """The `archives` collection (what `flickrhub archive` wrote, one document per file)."""
        return self.db[ARCHIVES]

    @property
    def audit_log(self) -> AsyncCollection[Doc]:
        """The `audit_log` collection (one entry per call, kept 1 year)."""
        return self.db[AUDIT_LOG]

    async def ensure_indexes(self) -> None:
        """Create every declared index and drop the retired ones; a no-op when that is done."""
        for name, models in INDEXES.items():
            await self.db[name].create_indexes(models)
        for name, retired in RETIRED_INDEXES.items():
            held = {ix["name"] async for ix in await self.db[name].list_indexes()}
            for index in sorted(held & set(retired)):
                try:
                    await self.db[name].drop_index(index)
                except OperationFailure as exc:  # another service starting at once dropped it first
                    if exc.code != INDEX_NOT_FOUND:
                        raise

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()
