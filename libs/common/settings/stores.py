"""The stores: the queue Redis, the cache Redis and MongoDB, with MongoDB's write concern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

# MONGO_WRITE_CONCERN's choices (common.mongo.write_concern turns each into a WriteConcern).
MONGO_WRITE_CONCERNS = ("majority", "journaled", "unjournaled")


@dataclass(frozen=True)
class StoreSettings:
    """Where the queue, the cache and the job documents live."""

    redis_url: str = setting(
        "REDIS_URL",
        "redis://127.0.0.1:6390/0",
        "Queue Redis (streams, leases; must run `noeviction` with AOF).",
    )
    cache_redis_url: str = setting(
        "CACHE_REDIS_URL", "redis://127.0.0.1:6391/0", "Cache Redis (runs `allkeys-lru` with a memory cap)."
    )
    mongo_url: str = setting(
        "MONGO_URL",
        "mongodb://127.0.0.1:27018/?directConnection=true&retryWrites=false",
        "MongoDB URI (keep `retryWrites=false` for SecantusDB).",
    )
    mongo_db: str = setting("MONGO_DB", "flickrhub", "MongoDB database name.")
    mongo_write_concern: str = setting(
        "MONGO_WRITE_CONCERN",
        "majority",
        "When MongoDB acknowledges a job document and every state change the pipeline relies on (claims, "
        "outcomes, tokens, API keys): `majority` (w: majority, j: true: journaled on a majority of a "
        "replica set; on a single server, journaled there), `journaled` (w: 1, j: true: the primary's "
        "journal only) or `unjournaled` (w: 1: in memory, a crashed server loses acknowledged jobs; "
        "refused in production).",
    )
    mongo_write_timeout_ms: int = setting(
        "MONGO_WRITE_TIMEOUT_MS",
        10000,
        "How long a write may wait for replica set members to satisfy MONGO_WRITE_CONCERN (wtimeout; 0: "
        "no bound). Past it the write fails, though the primary may have applied it.",
        at_least=0,
    )


def check_stores(s: Settings) -> None:
    """MONGO_WRITE_CONCERN is one of its choices, and journaled in production."""
    if s.mongo_write_concern not in MONGO_WRITE_CONCERNS:
        expected = ", ".join(MONGO_WRITE_CONCERNS)
        raise SettingsError(f"MONGO_WRITE_CONCERN: expected {expected}, got {s.mongo_write_concern!r}")
    if s.mongo_write_concern == "unjournaled" and s.environment == "production":
        raise SettingsError("MONGO_WRITE_CONCERN: unjournaled loses acknowledged jobs; refused in production")
