"""MongoDB: the client, the collections and the indexes FlickrHub declares in code.

Indexes and retention are applied at start (idempotently) by every service
that writes. The job document is the source of truth for every accepted job.

Acknowledged means durable: the collections whose writes the pipeline relies on once MongoDB
answered them (jobs: the document a job id is answered for, every claim and outcome; tokens; API
keys; pending authorizations; archive records) are obtained here with MONGO_WRITE_CONCERN
(default `w: majority, j: true`), so every write through them, whatever the call (insert_many,
update_one, bulk_write), is journaled before it is acknowledged. Setting it once here rather than
at each call keeps a new write from forgetting it. The audit log and upload blobs keep the
server's default: an audit line is not a promise, and a blob's chunks are written before its job
document, whose journaled write covers them (the journal is one sequence, and on a replica set the
majority commit point covers every earlier oplog entry).

TTL indexes whose period is a setting (the audit log's, AUDIT_RETENTION_DAYS) are declared from the
settings each service started with; when the index already holds another period, `ensure_indexes`
changes it in place with `collMod` (creating it again with other options would fail). Every service
that writes should run with the same value: the last one to start wins.

On SecantusDB (tests, `make run`) `j: true` commits the write's WiredTiger transaction with
`sync=on`: one fdatasync of its log per write command statement. One insert_many is one
transaction (up to 1,000 documents), so the gateway's group commit pays one flush per batch; a
bulk_write of N updates is N statements, N flushes. Without it SecantusDB answers before its log
buffer even reaches the OS, and a SIGKILL loses the last writes it acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from common import blobs
from common.settings import Settings

Doc = dict[str, Any]

JOBS = "jobs"
TOKENS = "tokens"
API_KEYS = "api_keys"
AUDIT_LOG = "audit_log"
AUTH_REQUESTS = "auth_requests"

INDEX_NOT_FOUND = 27  # MongoDB's IndexNotFound error code

# AUDIT_RETENTION_DAYS's default, for what is declared without settings (INDEXES, Mongo.connect).
DEFAULT_AUDIT_RETENTION_S = Settings().audit_retention_s
# Archives written by `flickrhub archive` (cli.archiver), one document per archived day.
ARCHIVES = "archives"


def _history_indexes() -> list[IndexModel]:
    """(client_id?, user_id, status?, created_at desc, job_id desc), for each choice of the ?.

    Four, not one per ListJobs filter: `method` is applied by gateway.history_query while it walks one of
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


def audit_indexes(retention_s: int) -> list[IndexModel]:
    """The audit log's one index: entries expire `retention_s` (AUDIT_RETENTION_DAYS) after creation."""
    return [IndexModel([("created_at", ASCENDING)], expireAfterSeconds=retention_s, name="retention_ttl")]


def key_version_index(field: str) -> IndexModel:
    """(field.v, _id): key rotation (cli.rotation) finds each old key version of an encrypted field
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
    # Each index here is walked by a query the code runs (tests/integration/test_query_plans.py fails
    # on one none of its audited queries uses): on SecantusDB every insert and every update rewrites
    # every index entry of the document, so an index costs each job three times (insert, claim, outcome).
    JOBS: [
        # Job identity and every compare-and-set transition (common.jobstore) in one index: `job_id`
        # alone and `{job_id, rev}` are both equalities on its leading fields. SecantusDB plans a
        # filter only on an index holding all of its fields (`{job_id, rev}` scans the collection
        # beside a `job_id` index, and `{_id, rev}` too, so a job id as `_id` would not spare it).
        # Unique on the pair: every document is inserted at revision 0, so a second document with a
        # job's id is refused while the first is at its first revision; job ids are server-made
        # uuid4s, and restores upsert by job_id.
        IndexModel([("job_id", ASCENDING), ("rev", DESCENDING)], unique=True, name="job_id_rev_unique"),
        # Recovery (common.recovery): live jobs untouched for long, per state; for running ones the
        # lease is checked on what this finds (a lease runs out only after the claim's updated_at).
        IndexModel([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated"),
        # Archival walks whole days of jobs by creation time (cli.archiver).
        IndexModel([("created_at", ASCENDING)], name="created_at"),
        # Job history (gateway.history_query): one index per combination of the ListJobs equalities that
        # narrow most (client, state), each ending in the page order, so every page walks one index
        # range in order; `method` is filtered while walking.
        *_history_indexes(),
        # Key rotation looks for secrets on old key versions; only jobs with a webhook have one.
        key_version_index("callback_secret"),
        # Each job gets expire_at from its final state; live jobs have none, never expire, and (partial)
        # hold no entry, so inserts and claims do not write one.
        IndexModel(
            [("expire_at", ASCENDING)],
            expireAfterSeconds=0,
            partialFilterExpression={"expire_at": {"$exists": True}},
            name="expire_at_ttl",
        ),
    ],
    TOKENS: [
        IndexModel([("user_id", ASCENDING)], unique=True, name="user_id_unique"),
        IndexModel([("token_id_hash", ASCENDING)], name="token_id_hash"),
        key_version_index("oauth_token"),
        key_version_index("oauth_token_secret"),
    ],
    API_KEYS: [
        IndexModel([("key_id", ASCENDING)], unique=True, name="key_id_unique"),
        # Rotation updates a key only while it is live: its filter names both fields.
        IndexModel([("key_id", ASCENDING), ("revoked", ASCENDING)], name="key_id_revoked"),
        key_version_index("signing_secret"),
    ],
    AUDIT_LOG: audit_indexes(DEFAULT_AUDIT_RETENTION_S),
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
        # Issue 9's index audit: indexes no query walked, or whose query another index serves.
        "token_id_hash",  # no query looks jobs up by token
        "method",  # no query looks jobs up by method (ListJobs filters it while walking)
        "job_id_unique",  # job_id_rev_unique serves `job_id` alone and keeps ids unique per revision
        "job_revision",  # (job_id, rev), non-unique: now job_id_rev_unique
        "status_lease",  # recovery finds running jobs on status_updated and checks their lease itself
        "retention_ttl",  # every document had an entry: now expire_at_ttl, partial on expire_at
    ),
    TOKENS: ("key_version",),  # on oauth_token.v alone: now oauth_token_key_version
}


def _ttl(model: IndexModel) -> bool:
    return "expireAfterSeconds" in model.document


# The collections whose acknowledged writes must survive a crash of the server (see the module doc).
DURABLE_COLLECTIONS = frozenset({JOBS, TOKENS, API_KEYS, AUTH_REQUESTS, ARCHIVES})


def write_concern(name: str = "majority", timeout_ms: int = 10_000) -> WriteConcern:
    """MONGO_WRITE_CONCERN (and MONGO_WRITE_TIMEOUT_MS) as the WriteConcern durable collections use.

    `majority` is right on every topology: a replica set acknowledges once a majority journaled the
    write, a single server (SecantusDB, a standalone mongod) once it journaled it.
    """
    wtimeout = timeout_ms or None
    if name == "majority":
        return WriteConcern(w="majority", j=True, wtimeout=wtimeout)
    if name == "journaled":
        return WriteConcern(w=1, j=True, wtimeout=wtimeout)
    if name == "unjournaled":
        return WriteConcern(w=1, wtimeout=wtimeout)
    raise ValueError(f"unknown write concern {name!r}")


@dataclass
class Mongo:
    """An AsyncMongoClient and FlickrHub's database; durable collections carry `durable` (see above)."""

    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    durable: WriteConcern = field(default_factory=write_concern)
    audit_retention_s: int = DEFAULT_AUDIT_RETENTION_S
    _collections: dict[str, AsyncCollection[Doc]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def connect(cls, url: str, db_name: str, durable: WriteConcern | None = None) -> Mongo:
        """Connect lazily (the first operation dials); datetimes come back timezone-aware.

        `durable` defaults to `w: majority, j: true`; services pass MONGO_WRITE_CONCERN (from_settings).
        """
        # Every call has a deadline: a reply that never comes fails (and is retried) instead of hanging a job.
        defaults = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 3000, "socketTimeoutMS": 15000}
        options: dict[str, Any] = {
            k: v for k, v in defaults.items() if k.lower() not in url.lower()
        }  # URI wins
        client: AsyncMongoClient[Doc] = AsyncMongoClient(url, tz_aware=True, appname="flickrhub", **options)
        return cls(client, client[db_name], durable or write_concern())

    @classmethod
    def from_settings(cls, settings: Settings) -> Mongo:
        """Connect to MONGO_URL / MONGO_DB with MONGO_WRITE_CONCERN on the durable collections and
        AUDIT_RETENTION_DAYS on the audit log."""
        concern = write_concern(settings.mongo_write_concern, settings.mongo_write_timeout_ms)
        mongo = cls.connect(settings.mongo_url, settings.mongo_db, concern)
        mongo.audit_retention_s = settings.audit_retention_s
        return mongo

    @property
    def indexes(self) -> dict[str, list[IndexModel]]:
        """INDEXES with this connection's audit retention."""
        return {**INDEXES, AUDIT_LOG: audit_indexes(self.audit_retention_s)}

    def collection(self, name: str) -> AsyncCollection[Doc]:
        """Collection `name`, with the durable write concern when it is one of DURABLE_COLLECTIONS."""
        found = self._collections.get(name)
        if found is None:
            concern = self.durable if name in DURABLE_COLLECTIONS else None
            found = self._collections[name] = self.db.get_collection(name, write_concern=concern)
        return found

    @property
    def jobs(self) -> AsyncCollection[Doc]:
        """The `jobs` collection (durable writes)."""
        return self.collection(JOBS)

    @property
    def tokens(self) -> AsyncCollection[Doc]:
        """The `tokens` collection (durable writes)."""
        return self.collection(TOKENS)

    @property
    def auth_requests(self) -> AsyncCollection[Doc]:
        """The `auth_requests` collection (pending OAuth authorizations; durable writes)."""
        return self.collection(AUTH_REQUESTS)

    @property
    def api_keys(self) -> AsyncCollection[Doc]:
        """The `api_keys` collection (bcrypt hashes and vault blobs, never a clear secret; durable writes)."""
        return self.collection(API_KEYS)

    @property
    def archives(self) -> AsyncCollection[Doc]:
        """The `archives` collection (one document per file `flickrhub archive` wrote; durable writes)."""
        return self.collection(ARCHIVES)

    @property
    def audit_log(self) -> AsyncCollection[Doc]:
        """The `audit_log` collection (buckets of per-call entries, common.auditlog; AUDIT_RETENTION_DAYS).

        The server's write concern: an audit line is not a promise."""
        return self.collection(AUDIT_LOG)

    async def ensure_indexes(self, own: Mapping[str, list[IndexModel]] | None = None) -> None:
        """Create every declared index, retune TTLs that changed, drop the retired ones; a no-op when done.

        `own`: the indexes of collections only the calling service uses, which it declares itself
        (the gateway's `auth_requests`, the CLI's `archives`); the shared collections' are here.
        """
        for name, models in {**self.indexes, **(own or {})}.items():
            await self._retune_ttls(name, models)
            await self.db[name].create_indexes(models)
        for name, retired in RETIRED_INDEXES.items():
            held = {ix["name"] async for ix in await self.db[name].list_indexes()}
            for index in sorted(held & set(retired)):
                try:
                    await self.db[name].drop_index(index)
                except OperationFailure as exc:  # another service starting at once dropped it first
                    if exc.code != INDEX_NOT_FOUND:
                        raise

    async def _retune_ttls(self, name: str, models: list[IndexModel]) -> None:
        """Give each existing TTL index of `name` the period `models` declare for it (collMod)."""
        periods = {m.document["name"]: m.document["expireAfterSeconds"] for m in models if _ttl(m)}
        if not periods:
            return
        async for held in await self.db[name].list_indexes():
            wanted = periods.get(held["name"])
            if wanted is not None and held.get("expireAfterSeconds") != wanted:
                change = {"name": held["name"], "expireAfterSeconds": wanted}
                await self.db.command("collMod", name, index=change)

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()
