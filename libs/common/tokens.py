"""The users' Flickr OAuth tokens: stored encrypted in MongoDB, looked up by FlickrHub user id."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.asynchronous.collection import AsyncCollection
from redis.exceptions import RedisError

from common import keys, redisio
from common.mongo import Doc
from common.vault import Vault

PURPOSE = "oauth-token"
# How long a looked-up token is kept when its cache can follow the tokens' epoch in Redis; without it
# (no Redis), a write elsewhere is seen after FALLBACK_TTL_S at most.
CACHE_TTL_S = 600.0
FALLBACK_TTL_S = 30.0
# The epoch is read at most this often: a token replaced or revoked elsewhere is seen within it.
EPOCH_CHECK_S = 1.0


def token_id_hash(oauth_token: str) -> str:
    """Stable, non-secret id of a token: names its queue, cache scope and jobs."""
    return hashlib.sha256(oauth_token.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class TokenRecord:
    """A user's Flickr access token, decrypted for signing (never logged: repr hides secrets)."""

    user_id: str
    token_id_hash: str
    oauth_token: str = field(repr=False)
    oauth_token_secret: str = field(repr=False)
    user_nsid: str = ""
    username: str = ""
    perms: str = "read"


@dataclass(frozen=True)
class TokenSummary:
    """A stored token as operators see it: who and what, never the token or its secret."""

    user_id: str
    token_id_hash: str
    user_nsid: str
    username: str
    perms: str
    revoked: bool
    created_at: datetime | None
    updated_at: datetime | None
    key_version: int

    @classmethod
    def from_doc(cls, doc: Doc) -> TokenSummary:
        """The summary of a `tokens` document (only the key version of the ciphertext is read)."""
        blob = doc.get("oauth_token")
        return cls(
            user_id=doc["user_id"],
            token_id_hash=doc.get("token_id_hash", ""),
            user_nsid=doc.get("user_nsid", ""),
            username=doc.get("username", ""),
            perms=doc.get("perms", ""),
            revoked=bool(doc.get("revoked", False)),
            created_at=doc.get("created_at"),
            updated_at=doc.get("updated_at"),
            key_version=int(blob.get("v", 0)) if isinstance(blob, dict) else 0,
        )


# Fields a summary needs; the secret's ciphertext is never read for it.
_SUMMARY_FIELDS = {
    name: 1
    for name in (
        "user_id",
        "token_id_hash",
        "user_nsid",
        "username",
        "perms",
        "revoked",
        "created_at",
        "updated_at",
        "oauth_token",
    )
}


class TokenStore:
    """Reads and writes the `tokens` collection, with an in-process cache of lookups.

    With `redis` (the queue Redis), every write bumps the tokens' epoch (keys.TOKENS_EPOCH) and
    every process's cache is dropped within EPOCH_CHECK_S of a bump: lookups are then kept for
    CACHE_TTL_S and a job costs no MongoDB read for its token. If the epoch cannot be read, the
    cache is dropped too (a store outage never serves a revoked token for long).
    """

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        vault: Vault,
        redis: redisio.Redis | None = None,
        cache_ttl_s: float | None = None,
        epoch_check_s: float = EPOCH_CHECK_S,
    ) -> None:
        """`epoch_check_s`: how often a lookup reads the tokens' epoch (0: at every lookup)."""
        self._tokens = collection
        self._vault = vault
        self._redis = redis
        self._ttl = cache_ttl_s if cache_ttl_s is not None else CACHE_TTL_S if redis else FALLBACK_TTL_S
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}
        self._loading: dict[str, asyncio.Future[TokenRecord | None]] = {}
        self._epoch: bytes | str | None = None
        self._epoch_at = float("-inf")
        self._epoch_check_s = epoch_check_s

    async def put(self, record: TokenRecord) -> None:
        """Store (or replace) a user's token, encrypted."""
        now = datetime.now(UTC)
        doc = {
            "user_id": record.user_id,
            "token_id_hash": record.token_id_hash,
            "oauth_token": self._vault.encrypt(record.oauth_token, purpose=PURPOSE, record_id=record.user_id),
            "oauth_token_secret": self._vault.encrypt(
                record.oauth_token_secret, purpose=PURPOSE, record_id=record.user_id
            ),
            "user_nsid": record.user_nsid,
            "username": record.username,
            "perms": record.perms,
            "revoked": False,
            "updated_at": now,
        }
        await self._tokens.update_one(
            {"user_id": record.user_id}, {"$set": doc, "$setOnInsert": {"created_at": now}}, upsert=True
        )
        self._cache.pop(record.user_id, None)
        await self._bump()

    async def _bump(self) -> None:
        """Tell every process's cache that a token changed (after the write: a reload sees it)."""
        if self._redis is not None:
            await self._redis.incr(keys.TOKENS_EPOCH)

    async def _follow_epoch(self, now: float) -> None:
        """Forget every cached lookup if the tokens' epoch moved since the last look (once a second)."""
        if self._redis is None or now - self._epoch_at < self._epoch_check_s:
            return
        self._epoch_at = now  # before the await: callers meanwhile use the cache as it is
        try:
            epoch = await self._redis.get(keys.TOKENS_EPOCH)
        except RedisError:
            epoch = None
            self._cache.clear()
        if epoch != self._epoch:
            self._cache.clear()
            self._epoch = epoch

    async def get(self, user_id: str) -> TokenRecord | None:
        """The user's live token, or None if unknown or revoked (cached, see the class)."""
        now = time.monotonic()
        await self._follow_epoch(now)
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        # One read per user however many callers miss together (a cache entry expiring under load).
        loading = self._loading.get(user_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(user_id))
            self._loading[user_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(user_id, None))
        return await asyncio.shield(loading)

    async def _load(self, user_id: str) -> TokenRecord | None:
        now = time.monotonic()
        doc = await self._tokens.find_one({"user_id": user_id})  # one indexed field: an index-only plan
        record = None
        if doc is not None and not doc.get("revoked", False):
            record = TokenRecord(
                user_id=user_id,
                token_id_hash=doc["token_id_hash"],
                oauth_token=self._vault.decrypt(doc["oauth_token"], purpose=PURPOSE, record_id=user_id),
                oauth_token_secret=self._vault.decrypt(
                    doc["oauth_token_secret"], purpose=PURPOSE, record_id=user_id
                ),
                user_nsid=doc.get("user_nsid", ""),
                username=doc.get("username", ""),
                perms=doc.get("perms", "read"),
            )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user_id] = (now + self._ttl, record)
        return record

    async def get_by_hash(self, token_id_hash: str) -> TokenRecord | None:
        """The live token with this id (cache warming knows only the id), or None."""
        doc = await self._tokens.find_one({"token_id_hash": token_id_hash}, {"user_id": 1})
        if doc is None:
            return None
        record = await self.get(str(doc["user_id"]))
        # Replaced since (the user re-authorized): the old id's answers are not refetched.
        return record if record is not None and record.token_id_hash == token_id_hash else None

    async def summary(self, user_id: str) -> TokenSummary | None:
        """The operator view of a user's token (revoked ones too), or None if the user is unknown."""
        doc = await self._tokens.find_one({"user_id": user_id}, _SUMMARY_FIELDS)
        return TokenSummary.from_doc(doc) if doc is not None else None

    async def list(self, limit: int, after_user_id: str = "") -> list[TokenSummary]:
        """Up to `limit` tokens ordered by user id, starting after `after_user_id` (keyset pagination)."""
        query = {"user_id": {"$gt": after_user_id}} if after_user_id else {}
        cursor = self._tokens.find(query, _SUMMARY_FIELDS).sort("user_id", 1).limit(limit)
        return [TokenSummary.from_doc(doc) async for doc in cursor]

    async def revoke(self, user_id: str) -> TokenSummary | None:
        """Mark a user's token revoked (jobs for the user are then refused); None if the user is unknown."""
        now = datetime.now(UTC)
        result = await self._tokens.update_one(
            {"user_id": user_id}, {"$set": {"revoked": True, "revoked_at": now, "updated_at": now}}
        )
        self._cache.pop(user_id, None)
        if result.matched_count == 0:
            return None
        await self._bump()
        return await self.summary(user_id)
