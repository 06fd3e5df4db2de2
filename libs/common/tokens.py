"""The users' Flickr OAuth tokens: stored encrypted in MongoDB, looked up by FlickrHub user id."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.asynchronous.collection import AsyncCollection

from common.mongo import Doc
from common.vault import Vault

PURPOSE = "oauth-token"


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


class TokenStore:
    """Reads and writes the `tokens` collection, with a short in-process cache of lookups."""

    def __init__(self, collection: AsyncCollection[Doc], vault: Vault, cache_ttl_s: float = 30.0) -> None:
        self._tokens = collection
        self._vault = vault
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}

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

    async def get(self, user_id: str) -> TokenRecord | None:
        """The user's live token, or None if unknown or revoked (cached for a few seconds)."""
        hit = self._cache.get(user_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        doc = await self._tokens.find_one({"user_id": user_id, "revoked": False})
        record = None
        if doc is not None:
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
