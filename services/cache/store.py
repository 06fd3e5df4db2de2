"""The cache's Redis logic: per-token scopes, TTL per method class, O(1) invalidation.

Key layout (all names come from `common.keys`; `{T}` is the token's hash tag):

    fhc:gen:{T}             the token's generation
    fhc:gen:{T}:<method>    the token+method generation
    fhc:e:{T}:<gen>:<mgen>:<digest>   one answer; digest = SHA-256(method, sorted params, T)
    fhc:stats               hits / misses / puts of every replica (never touched by a script)

Invalidating a token (or a token's method) moves its generation forward: every
older entry becomes unreachable at once, whatever their number, and ages out by
TTL or LRU. Get and Put read the generations and touch the entry in one Lua call
(one round trip, pipelined with the stats increments); every key a script
touches carries the token's hash tag, so it stays inside one cluster slot.

Generations are seeded from the Redis clock (microseconds) and never restart at
a fixed value: this Redis runs allkeys-lru, so it may evict a generation key
while invalidated entries live on. A missing generation therefore means "no
entry can match" (Get misses, Put seeds a fresh value), never "generation 0",
which would bring the invalidated entries back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from common import keys, redisio
from common.flickr_methods import is_search, is_write
from common.settings import Settings

MAX_TTL_S = 24 * 3600
# Redis calls in flight at once; the client's pool has as many connections. redis-py's
# asyncio pool raises MaxConnectionsError past its size instead of waiting, so calls queue here.
MAX_IN_FLIGHT = 64
# A generation outlives every entry stored under it (each Put refreshes it), so
# its expiry never drops a live entry; it only stops idle tokens' keys piling up.
GENERATION_TTL_S = MAX_TTL_S + 3600

_NOW_US = """
local function now_us()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
"""

# KEYS: token generation, token+method generation. ARGV: entry prefix, digest.
# → false (miss) or {value, seconds left}
_GET = """
local g = redis.call('GET', KEYS[1])
if not g then return false end
local mg = redis.call('GET', KEYS[2])
if not mg then return false end
local entry = ARGV[1] .. g .. ':' .. mg .. ':' .. ARGV[2]
local value = redis.call('GET', entry)
if not value then return false end
return {value, redis.call('TTL', entry)}
"""

# KEYS: token generation, token+method generation.
# ARGV: entry prefix, digest, value, ttl, generation ttl. → 1
_PUT = (
    _NOW_US
    + """
local function generation(key)
  local g = redis.call('GET', key) or now_us()
  redis.call('SET', key, g, 'EX', ARGV[5])
  return g
end
local entry = ARGV[1] .. generation(KEYS[1]) .. ':' .. generation(KEYS[2]) .. ':' .. ARGV[2]
redis.call('SET', entry, ARGV[3], 'EX', ARGV[4])
return 1
"""
)

# KEYS: the generation to move. ARGV: generation ttl. → the new generation
# max(now, old + 1): strictly increasing, and never below the clock, so a value
# seeded after an eviction cannot meet an older one.
_INVALIDATE = (
    _NOW_US
    + """
local now = tonumber(now_us())
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = string.format('%d', math.max(now, old + 1))
redis.call('SET', KEYS[1], new, 'EX', ARGV[1])
return new
"""
)


@dataclass(frozen=True)
class Hit:
    """A cached answer and the seconds it has left."""

    value: bytes
    ttl_s: int


class CacheStore:
    """Reads and writes cached Flickr answers (its client has decode=False: values are bytes).

    Hit and miss counts are only known once a Get's script has answered, so they
    ride the next pipeline this store sends (or `flush_stats`, which the app runs
    every second): the shared counters stay one round trip per operation.
    """

    def __init__(self, redis: redisio.Redis, settings: Settings) -> None:
        self._redis = redis
        self._read_ttl = settings.cache_ttl_read_s
        self._search_ttl = settings.cache_ttl_search_s
        self._get = redis.register_script(_GET)
        self._put = redis.register_script(_PUT)
        self._invalidate = redis.register_script(_INVALIDATE)
        self._pending: Counter[str] = Counter()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    def ttl_for(self, method: str, requested: int = 0) -> int:
        """Seconds an answer of `method` may be cached; 0 for methods that are never cached."""
        if is_write(method):
            return 0
        if requested > 0:
            return min(requested, MAX_TTL_S)
        return self._search_ttl if is_search(method) else self._read_ttl

    def count(self, field: str) -> None:
        """Count a hit or miss answered without Redis (it rides the next pipeline)."""
        self._pending[field] += 1

    async def get(self, method: str, params: Mapping[str, str], token: str) -> Hit | None:
        """The cached answer in the token's current scope, or None."""
        try:
            found = await self._call(self._get, _generations(token, method), _entry(method, params, token))
        except RedisError:
            self._pending["misses"] += 1
            raise
        self._pending["hits" if found else "misses"] += 1
        if not found:
            return None
        value, ttl = found
        return Hit(bytes(value), int(ttl))

    async def put(self, method: str, params: Mapping[str, str], token: str, value: bytes, ttl_s: int) -> None:
        """Store an answer in the token's current scope for `ttl_s` seconds."""
        args = [*_entry(method, params, token), value, ttl_s, GENERATION_TTL_S]
        await self._call(self._put, _generations(token, method), args, puts=1)

    async def invalidate(self, token: str, method: str = "") -> int:
        """Drop every entry of the token (or of the token's method) in O(1); the new generation."""
        generation = keys.cache_generation(token, method)
        return int(await self._call(self._invalidate, [generation], [GENERATION_TTL_S]))

    async def load_scripts(self) -> None:
        """Load the Lua scripts (one round trip) so the first calls meet no NOSCRIPT."""
        scripts = (self._get, self._put, self._invalidate)
        pipe = self._redis.pipeline(transaction=False)
        for script in scripts:
            pipe.script_load(script.script)
        for script, sha in zip(scripts, await pipe.execute(), strict=True):
            script.sha = sha.decode() if isinstance(sha, bytes) else sha

    async def flush_stats(self) -> None:
        """Send the hit and miss counts still held by this replica."""
        if self._pending:
            pipe = self._redis.pipeline(transaction=False)
            await self._execute(pipe, self._queue_stats(pipe, Counter()))

    async def stats(self) -> dict[str, int]:
        """Hits, misses and puts of every replica, plus Redis' own key count, memory and evictions."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.CACHE_STATS)
        pipe.dbsize()
        pipe.info("memory")
        pipe.info("stats")
        flushed = self._queue_stats(pipe, Counter())
        results = await self._execute(pipe, flushed)
        if errors := [r for r in results if isinstance(r, RedisError)]:
            raise errors[0]
        raw, dbsize, memory, stats, *_ = results
        counters = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return {
            # Our own unflushed counts were sent after HGETALL read the hash.
            **{f: counters.get(f, 0) + flushed[f] for f in ("hits", "misses", "puts")},
            "keys": int(dbsize),
            "used_memory_bytes": int(memory.get("used_memory", 0)),
            "evicted_keys": int(stats.get("evicted_keys", 0)),
        }

    async def _call(
        self, script: AsyncScript, script_keys: Sequence[str], args: Sequence[Any], **extra: int
    ) -> Any:
        """EVALSHA plus the pending stats in one pipeline (one round trip).

        Not `script(client=pipe)`: redis-py then sends SCRIPT EXISTS before every
        pipeline. A NOSCRIPT answer (Redis restarted or flushed its scripts)
        reloads the script and runs it again, without counting the stats twice.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
        taken = self._queue_stats(pipe, Counter(extra))
        result, *_ = await self._execute(pipe, taken)
        if isinstance(result, NoScriptError):
            async with self._slots:
                await self.load_scripts()
                return await self._redis.evalsha(script.sha, len(script_keys), *script_keys, *args)
        if isinstance(result, Exception):
            raise result
        return result

    def _queue_stats(self, pipe: Any, extra: Counter[str]) -> Counter[str]:
        """Queue HINCRBYs of the pending counts plus `extra`; returns the pending part taken."""
        taken, self._pending = self._pending, Counter()
        for field, n in sorted((taken + extra).items()):
            pipe.hincrby(keys.CACHE_STATS, field, n)
        return taken

    async def _execute(self, pipe: Any, taken: Counter[str]) -> list[Any]:
        try:
            async with self._slots:
                return list(await pipe.execute(raise_on_error=False))
        except RedisError:
            self._pending.update(taken)  # those counts ride the next pipeline that gets through
            raise


def _generations(token: str, method: str) -> list[str]:
    return [keys.cache_generation(token), keys.cache_generation(token, method)]


def _entry(method: str, params: Mapping[str, str], token: str) -> list[str]:
    return [keys.cache_entry_prefix(token), keys.cache_digest(method, params, token)]
