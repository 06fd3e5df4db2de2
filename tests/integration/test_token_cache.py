"""Looked-up tokens are cached for long, yet a replacement or revocation anywhere is seen within a second.

Two TokenStores over the same MongoDB and queue Redis stand for two processes (a gateway and a
worker): one writes, the other must stop using what it cached once the tokens' epoch moved, and
must not read MongoDB again while nothing changed.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from common import keys, redisio, tokens
from common.tokens import TokenRecord, TokenStore
from common.vault import LocalKeyProvider, Vault


class Counting:
    """The tokens collection, counting find_one calls (the reads a job would pay for)."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.reads = 0

    async def find_one(self, *args: Any, **kw: Any) -> Any:
        self.reads += 1
        return await self._collection.find_one(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def _record(secret: str) -> TokenRecord:
    return TokenRecord(
        user_id="U1",
        token_id_hash=tokens.token_id_hash(secret),
        oauth_token=secret,
        oauth_token_secret="s-" + secret,
        user_nsid="1@N00",
        username="u",
        perms="write",
    )


async def test_a_write_in_one_process_voids_the_others_cache(
    mongo_db: AsyncDatabase[dict[str, object]], redis: redisio.Redis
) -> None:
    vault = Vault(LocalKeyProvider({1: b"k" * 32}))
    writer = TokenStore(mongo_db["tokens"], vault, redis)
    counted = Counting(mongo_db["tokens"])
    # The reader looks at the epoch on every lookup (a process does once a second).
    reader = TokenStore(counted, vault, redis, epoch_check_s=0.0)  # type: ignore[arg-type]
    await writer.put(_record("first"))
    assert int(await redis.get(keys.TOKENS_EPOCH) or 0) == 1
    first = await reader.get("U1")
    assert first is not None and first.oauth_token == "first"
    for _ in range(50):
        assert await reader.get("U1") == first
    assert counted.reads == 1  # cached: no read per job

    await writer.put(_record("second"))
    again = await reader.get("U1")
    assert again is not None and again.oauth_token == "second" and counted.reads == 2
    assert await writer.revoke("U1") is not None
    assert await reader.get("U1") is None

    # The epoch lost (a Redis without it) differs from the one seen: the cache is dropped, not trusted.
    await reader.get("U1")
    reads = counted.reads
    await redis.delete(keys.TOKENS_EPOCH)
    await reader.get("U1")
    assert counted.reads == reads + 1


async def test_without_redis_the_cache_is_short(mongo_db: AsyncDatabase[dict[str, object]]) -> None:
    store = TokenStore(mongo_db["tokens"], Vault(LocalKeyProvider({1: b"k" * 32})))
    assert store._ttl == tokens.FALLBACK_TTL_S
    await store.put(_record("only"))
    found = await store.get("U1")
    assert found is not None and found.oauth_token == "only"
