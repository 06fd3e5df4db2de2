"""Pending OAuth authorizations: request tokens waiting for the user's approval, in MongoDB.

A request is found by the hash of its request token (the token itself is never
stored); its secret is encrypted with the vault. Completing claims the request
with a guarded update (SecantusDB: an indexed find plus a conditional
`update_one`, never `find_one_and_update`), so exactly one completion wins; a
failed exchange with Flickr hands the claim back so the user may try again.
Requests stay past their expiry for a while (`RETENTION_S`) so a late
completion is told "expired" rather than "unknown"; the TTL index purges them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from common.errors import FailedPrecondition
from common.mongo import AUTH_REQUESTS, Doc, key_version_index
from common.vault import Vault

PURPOSE = "request-token-secret"
# How long an expired or completed request is kept so a late completion gets a clear answer.
RETENTION_S = 3600
# How long a completion may hold its claim while it talks to Flickr before another may take over.
CLAIM_S = 120

PENDING = "pending"
CLAIMED = "claimed"
COMPLETED = "completed"

# The collection's indexes (the gateway alone uses it; Mongo.ensure_indexes creates them at its start).
INDEXES: dict[str, list[IndexModel]] = {
    AUTH_REQUESTS: [
        # Found by the hash of their request token; purged after expire_at.
        IndexModel([("request_id_hash", ASCENDING)], unique=True, name="request_id_hash_unique"),
        # Claims and their release are updates guarded by the claim read (and the state) as well.
        IndexModel(
            [("request_id_hash", ASCENDING), ("claim", ASCENDING), ("state", ASCENDING)], name="request_claim"
        ),
        key_version_index("secret"),
        IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
    ]
}


def request_id_hash(request_token: str) -> str:
    """The stored, non-secret id of a request token."""
    return hashlib.sha256(f"auth-request:{request_token}".encode()).hexdigest()


@dataclass(frozen=True)
class AuthRequest:
    """A started authorization, with its request token secret decrypted for the exchange."""

    request_token: str = field(repr=False)
    request_secret: str = field(repr=False)
    perms: str
    user_id: str  # "" for a new user
    expires_at: datetime
    claim: str  # the claim this completion holds


class AuthRequestStore:
    """Reads and writes the `auth_requests` collection."""

    def __init__(self, collection: AsyncCollection[Doc], vault: Vault) -> None:
        self._requests = collection
        self._vault = vault

    async def create(
        self, request_token: str, request_secret: str, *, perms: str, user_id: str, ttl_s: float, mode: str
    ) -> datetime:
        """Remember a request token until `ttl_s` from now; returns when it expires."""
        rid = request_id_hash(request_token)
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=ttl_s)
        await self._requests.insert_one(
            {
                "request_id_hash": rid,
                "secret": self._vault.encrypt(request_secret, purpose=PURPOSE, record_id=rid),
                "perms": perms,
                "user_id": user_id,
                "mode": mode,
                "state": PENDING,
                "claim": "",
                "claimed_until": now,
                "created_at": now,
                "expires_at": expires_at,
                "expire_at": expires_at + timedelta(seconds=RETENTION_S),
            }
        )
        return expires_at

    async def claim(self, request_token: str) -> AuthRequest:
        """Take the pending request for one completion; FAILED_PRECONDITION if unknown, used or expired."""
        rid = request_id_hash(request_token)
        doc = await self._requests.find_one({"request_id_hash": rid})
        now = datetime.now(UTC)
        if doc is None:
            raise FailedPrecondition(
                "unknown authorization request (or purged after expiry): start the authorization again",
                "AUTH_REQUEST_UNKNOWN",
            )
        if doc["state"] == COMPLETED:
            raise FailedPrecondition("authorization request already completed", "AUTH_REQUEST_USED")
        if doc["expires_at"] <= now:
            raise FailedPrecondition("authorization request expired", "AUTH_REQUEST_EXPIRED")
        if doc["state"] == CLAIMED and doc["claimed_until"] > now:
            raise FailedPrecondition(
                "authorization request is being completed by another call", "AUTH_REQUEST_IN_PROGRESS"
            )
        claim = secrets.token_hex(8)
        # Guarded by the claim we read: of two racing completions exactly one matches.
        result = await self._requests.update_one(
            {"request_id_hash": rid, "state": doc["state"], "claim": doc["claim"]},
            {
                "$set": {
                    "state": CLAIMED,
                    "claim": claim,
                    "claimed_until": now + timedelta(seconds=CLAIM_S),
                }
            },
        )
        if result.modified_count != 1:
            raise FailedPrecondition(
                "authorization request is being completed by another call", "AUTH_REQUEST_IN_PROGRESS"
            )
        return AuthRequest(
            request_token=request_token,
            request_secret=self._vault.decrypt(doc["secret"], purpose=PURPOSE, record_id=rid),
            perms=doc["perms"],
            user_id=doc.get("user_id", ""),
            expires_at=doc["expires_at"],
            claim=claim,
        )

    async def release(self, request: AuthRequest) -> None:
        """Hand a claim back after a failed exchange, so the user can retry (e.g. a mistyped verifier)."""
        await self._requests.update_one(
            {"request_id_hash": request_id_hash(request.request_token), "claim": request.claim},
            {"$set": {"state": PENDING, "claimed_until": datetime.now(UTC)}},
        )

    async def complete(self, request: AuthRequest, user_id: str) -> None:
        """Mark the request used and drop its secret; later completions are refused."""
        await self._requests.update_one(
            {"request_id_hash": request_id_hash(request.request_token), "claim": request.claim},
            {
                "$set": {"state": COMPLETED, "user_id": user_id, "completed_at": datetime.now(UTC)},
                "$unset": {"secret": ""},
            },
        )
