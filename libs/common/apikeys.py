"""API keys: their format, their MongoDB records and the secrets they hold at rest.

A key is `fhk_<key_id>_<secret>`. The key id is visible so a request costs one
indexed lookup; the secret is stored only as a bcrypt hash. Each key also has a
signing secret for HMAC-signed requests (common.signing): HMAC needs the clear
secret on the server, so it is stored encrypted by the vault (purpose
"api-key-signing", re-encrypted by `flickrhub vault rotate`). Neither secret is
ever returned after the answer that created it.

Every rotation and revocation also bumps the key's epoch in the queue Redis
(keys.api_key_epoch): gateway replicas cache successful checks in memory and
drop them as soon as they see a newer epoch (gateway.authn).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import bcrypt
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from common import keys, redisio
from common.mongo import Doc
from common.settings import Settings
from common.vault import Vault

PREFIX = "fhk"
SIGNING_PURPOSE = "api-key-signing"
ALL_USERS = "*"
CLASSES = ("read", "write", "upload")
# bcrypt reads at most 72 bytes. Our secrets are 43 ASCII characters we generate, so a longer one is
# never ours: refuse it rather than truncate (bcrypt<4.1 did: two secrets sharing 72 bytes matched)
# or pre-hash (it would change every stored hash and buys nothing for secrets we choose).
MAX_SECRET_BYTES = 72
KEY_ID_RE = re.compile(r"[a-z0-9]{4,32}")
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")
NAME_MAX = 100


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored, without its secrets."""

    key_id: str
    name: str
    user_ids: tuple[str, ...]
    admin: bool
    ip_allowlist: tuple[str, ...] = ()
    rate_limit_per_min: int = 0  # the key's own limit, else API_KEY_DEFAULT_RATE_PER_MIN (from_doc)
    class_limits: dict[str, int] = field(default_factory=dict)
    revoked: bool = False
    created_at: datetime | None = None
    rotated_at: datetime | None = None
    last_used_at: datetime | None = None

    def may_act_for(self, user_id: str) -> bool:
        """True when the key is bound to `user_id` (or to every user)."""
        return ALL_USERS in self.user_ids or user_id in self.user_ids

    def allows_ip(self, address: str) -> bool:
        """True when the key has no allow-list or `address` is inside one of its networks."""
        if not self.ip_allowlist:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in self.ip_allowlist)

    @classmethod
    def from_doc(cls, doc: Doc, default_rate_per_min: int) -> ApiKeyRecord:
        """The record of an `api_keys` document; a key without a limit of its own gets the default."""
        return cls(
            key_id=doc["key_id"],
            name=doc.get("name", ""),
            user_ids=tuple(doc.get("user_ids", ())),
            admin=bool(doc.get("admin")),
            ip_allowlist=tuple(doc.get("ip_allowlist", ())),
            rate_limit_per_min=int(doc.get("rate_limit_per_min") or default_rate_per_min),
            class_limits={k: int(v) for k, v in (doc.get("class_limits") or {}).items() if v},
            revoked=bool(doc.get("revoked")),
            created_at=doc.get("created_at"),
            rotated_at=doc.get("rotated_at"),
            last_used_at=doc.get("last_used_at"),
        )


@dataclass(frozen=True)
class IssuedKey:
    """A key's secrets as shown once, on creation or rotation."""

    record: ApiKeyRecord
    api_key: str
    signing_secret: str


def format_key(key_id: str, secret: str) -> str:
    """The bearer credential."""
    return f"{PREFIX}_{key_id}_{secret}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a presented key, or None when it is not shaped like one of ours."""
    prefix, _, rest = presented.strip().partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not KEY_ID_RE.fullmatch(key_id) or not SECRET_RE.fullmatch(secret):
        return None
    return key_id, secret


def hash_secret(secret: str, rounds: int) -> str:
    """bcrypt hash of a secret (CPU-heavy: call through asyncio.to_thread on a server)."""
    raw = secret.encode()
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(f"an API key secret is at most {MAX_SECRET_BYTES} bytes (bcrypt's limit)")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode()


def check_secret(secret: str, hashed: str) -> bool:
    """bcrypt verification; False for a secret over 72 bytes (CPU-heavy: run it in a thread)."""
    raw = secret.encode()
    if len(raw) > MAX_SECRET_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, hashed.encode())
    except ValueError:
        return False


def _now() -> datetime:
    return datetime.now(UTC)


# How long a gateway replica may go on passing a key's calls on a rate-limit lease without looking at
# the key's epoch (gateway.ratelimit); rotate and revoke wait this long after bumping it.
EPOCH_LEASE_S = 0.2


class ApiKeyStore:
    """The `api_keys` collection: one indexed lookup by key id per (uncached) request.

    A document holds the key's own rate limit, 0 when it has none; its record (`record`) carries
    the limit in force, API_KEY_DEFAULT_RATE_PER_MIN for such a key, so changing the setting
    reaches every key that never chose a limit.
    """

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        vault: Vault,
        *,
        redis: redisio.Redis | None = None,
        bcrypt_rounds: int,
        default_rate_per_min: int,
    ) -> None:
        """`redis` (the queue Redis) is where rotate and revoke bump the key's epoch: the gateway's
        store has it; tools that only create keys may do without."""
        self.collection = collection
        self._vault = vault
        self._redis = redis
        self._rounds = bcrypt_rounds
        self.default_rate_per_min = default_rate_per_min

    @classmethod
    def from_settings(
        cls,
        collection: AsyncCollection[Doc],
        vault: Vault,
        settings: Settings,
        *,
        redis: redisio.Redis | None = None,
    ) -> ApiKeyStore:
        """The store with API_KEY_BCRYPT_ROUNDS and API_KEY_DEFAULT_RATE_PER_MIN."""
        return cls(
            collection,
            vault,
            redis=redis,
            bcrypt_rounds=settings.api_key_bcrypt_rounds,
            default_rate_per_min=settings.api_key_default_rate_per_min,
        )

    def record(self, doc: Doc) -> ApiKeyRecord:
        """The record of a stored key, with the limit in force."""
        return ApiKeyRecord.from_doc(doc, self.default_rate_per_min)

    async def create(
        self,
        name: str,
        user_ids: Iterable[str],
        *,
        admin: bool = False,
        ip_allowlist: Iterable[str] = (),
        rate_limit_per_min: int = 0,
        class_limits: dict[str, int] | None = None,
        key_id: str | None = None,
    ) -> IssuedKey:
        """Store a new key; its secrets are in the answer and nowhere else."""
        key_id = key_id or secrets.token_hex(8)
        secret, signing = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        doc: Doc = {
            "key_id": key_id,
            "name": name,
            "user_ids": list(user_ids),
            "admin": admin,
            "ip_allowlist": list(ip_allowlist),
            "rate_limit_per_min": rate_limit_per_min,  # 0: none of its own (the default applies)
            "class_limits": {k: v for k, v in (class_limits or {}).items() if v},
            "revoked": False,
            "created_at": _now(),
            "rotated_at": None,
            "last_used_at": None,
            **await self._secrets(key_id, secret, signing),
        }
        await self.collection.insert_one(doc)
        return IssuedKey(self.record(doc), format_key(key_id, secret), signing)

    async def _secrets(self, key_id: str, secret: str, signing: str) -> Doc:
        hashed = await asyncio.to_thread(hash_secret, secret, self._rounds)
        blob = self._vault.encrypt(signing, purpose=SIGNING_PURPOSE, record_id=key_id)
        return {"secret_hash": hashed, "signing_secret": blob}

    async def find(self, key_id: str) -> Doc | None:
        """The stored document of a key (with its hash and encrypted signing secret)."""
        return await self.collection.find_one({"key_id": key_id})

    def signing_secret(self, doc: Doc) -> str:
        """The clear signing secret of a stored key."""
        return self._vault.decrypt(doc["signing_secret"], purpose=SIGNING_PURPOSE, record_id=doc["key_id"])

    async def list(self, limit: int, after: str = "") -> list[ApiKeyRecord]:
        """Keys ordered by key id, starting after `after`."""
        query: Doc = {"key_id": {"$gt": after}} if after else {}
        cursor = self.collection.find(query, {"secret_hash": 0, "signing_secret": 0})
        return [self.record(d) async for d in cursor.sort("key_id", ASCENDING).limit(limit)]

    async def rotate(self, key_id: str) -> IssuedKey | None:
        """New secrets for a live key (the old ones stop working); None when unknown or revoked."""
        secret, signing = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        changes = {**await self._secrets(key_id, secret, signing), "rotated_at": _now()}
        result = await self.collection.update_one({"key_id": key_id, "revoked": False}, {"$set": changes})
        if not result.matched_count:
            return None
        await self.bump_epoch(key_id)
        doc = await self.find(key_id)
        assert doc is not None
        return IssuedKey(self.record(doc), format_key(key_id, secret), signing)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark a key revoked for good; None when unknown."""
        result = await self.collection.update_one({"key_id": key_id}, {"$set": {"revoked": True}})
        if not result.matched_count:
            return None
        await self.bump_epoch(key_id)
        doc = await self.find(key_id)
        return self.record(doc) if doc else None

    async def bump_epoch(self, key_id: str) -> None:
        """Tell every gateway replica that its cached checks of this key are void (after the Mongo write:
        a replica that reloads on the new epoch must find the new document).

        Then wait out EPOCH_LEASE_S: a replica may pass calls of a busy key on a lease granted
        under the old epoch (gateway.ratelimit) for at most that long, so once this returns,
        every replica refuses the old secret at its next call.
        """
        if self._redis is not None:
            await self._redis.incr(keys.api_key_epoch(key_id))
            await asyncio.sleep(EPOCH_LEASE_S)

    async def touch(self, key_ids: Iterable[str]) -> None:
        """Record that these keys were used now (called off the request path, in batches)."""
        ids = sorted(set(key_ids))
        if ids:
            await self.collection.update_many({"key_id": {"$in": ids}}, {"$set": {"last_used_at": _now()}})
