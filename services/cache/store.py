"""The cache's Redis logic: per-token scopes, TTL per method class, O(1) invalidation.

An entry's key is `fhc:e:{token}:<token generation>:<method generation>:<digest>`
where the digest is SHA-256 of (method, sorted params, token). Invalidating a
token (or a token's method) increments its generation: every older entry becomes
unreachable at once, whatever their number, and ages out by TTL or LRU. Get and
Put read the generations and touch the entry in one Lua call; all the keys it
touches carry the token's hash tag, so they share a cluster slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common import keys, redisio
from common.flickr_methods import is_search, is_write
from common.settings import Settings

MAX_TTL_S = 24 * 3600

_GET = """
local g = redis.call('GET', KEYS[1]) or '0'
local mg = redis.call('GET', KEYS[2]) or '0'
local key = ARGV[1] .. g .. ':' .. mg .. ':' .. ARGV[2]
local value = redis.call('GET', key)
if not value then return false end
return {value, redis.call('TTL', key)}
"""

_PUT = """
local g = redis.call('GET', KEYS[1]) or '0'
local mg = redis.call('GET', KEYS[2]) or '0'
local key = ARGV[1] .. g .. ':' .. mg .. ':' .. ARGV[2]
redis.call('SET', key, ARGV[3], 'EX', ARGV[4])
return 1
"""


@dataclass(frozen=True)
class Hit:
    """A cached answer and the seconds it has left."""

    value: bytes
    ttl_s: int


class CacheStore:
    """Reads and writes cached Flickr answers (its client has decode=False: values are bytes)."""

    def __init__(self, redis: redisio.Redis, settings: Settings) -> None:
        self._redis = redis
        self._read_ttl = settings.cache_ttl_read_s
        self._search_ttl = settings.cache_ttl_search_s
        self._get = redis.register_script(_GET)
        self._put = redis.register_script(_PUT)

    def ttl_for(self, method: str, requested: int = 0) -> int:
        """Seconds an answer of `method` may be cached; 0 for methods that are never cached."""
        if is_write(method):
            return 0
        if requested > 0:
            return min(requested, MAX_TTL_S)
        return self._search_ttl if is_search(method) else self._read_ttl

    @staticmethod
    def _scope(method: str, params: Mapping[str, str], token: str) -> tuple[list[str], list[str]]:
        generation_keys = [keys.cache_generation(token), keys.cache_generation(token, method)]
        return generation_keys, [keys.cache_entry_prefix(token), keys.cache_digest(method, params, token)]

    async def get(self, method: str, params: Mapping[str, str], token: str) -> Hit | None:
        """The cached answer in the token's current scope, or None."""
        gens, args = self._scope(method, params, token)
        found = await self._get(keys=gens, args=args)
        await self._redis.hincrby(keys.CACHE_STATS, "hits" if found else "misses", 1)
        if not found:
            return None
        value, ttl = found
        return Hit(bytes(value), int(ttl))

    async def put(self, method: str, params: Mapping[str, str], token: str, value: bytes, ttl_s: int) -> None:
        """Store an answer in the token's current scope for `ttl_s` seconds."""
        gens, args = self._scope(method, params, token)
        pipe = self._redis.pipeline(transaction=False)
        await self._put(keys=gens, args=[*args, value, ttl_s], client=pipe)
        pipe.hincrby(keys.CACHE_STATS, "puts", 1)
        await pipe.execute()

    async def invalidate(self, token: str, method: str = "") -> int:
        """Drop every entry of the token (or of the token's method) in O(1); the new generation."""
        return int(await self._redis.incr(keys.cache_generation(token, method)))

    async def stats(self) -> dict[str, int]:
        """Hits, misses and puts of every replica, plus Redis' own key count, memory and evictions."""
        raw = await self._redis.hgetall(keys.CACHE_STATS)
        counters = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        memory = await self._redis.info("memory")
        stats = await self._redis.info("stats")
        return {
            "hits": int(counters.get("hits", 0)),
            "misses": int(counters.get("misses", 0)),
            "puts": int(counters.get("puts", 0)),
            "keys": int(await self._redis.dbsize()),
            "used_memory_bytes": int(memory.get("used_memory", 0)),
            "evicted_keys": int(stats.get("evicted_keys", 0)),
        }
