"""The cache's Redis logic: per-token scopes, TTL per method class, O(1) invalidation.

Key layout (all names come from `common.keys`; `{T}` is the token's hash tag):

    fhc:gen:{T}             the token's generation
    fhc:gen:{T}:<method>    the token+method generation
    fhc:e:{T}:<digest>      one answer; digest = SHA-256(method, sorted params, T)
    fhc:stats               hits / misses / puts of every replica, also per method (`hits:<method>`)
    fhc:hot                 warming only: decayed request counts per key (member = canonical request)
    fhc:warm:{T}:<digest>   warming only: held while a worker refetches that entry

An entry's value is a header line, then the answer's bytes:

    b"<gen>:<mgen>:<expires_at>\\n" + answer

the generation and method generation it was stored under, and when it expires (unix seconds,
the service's clock). The header holds only digits and colons, so its first newline ends it,
whatever the answer holds.

Invalidating a token (or a token's method) moves its generation forward: every older entry stops
matching at once, whatever their number, and ages out by TTL or LRU (or is overwritten by the
next Put of its key). A Get is one MGET of both generations and the entry, no script (pipelined
with the stats increments): a hit when both generations exist and equal the header's. A Put is a
Lua script that reads the generations (seeding a missing one) and writes the entry with them.
Every key a script touches comes in through KEYS, named by `common.keys`, and carries the token's
hash tag, so each script call stays inside one cluster slot (Redis Cluster's rule). A
miss keeps the generations it read, and a batched Put of that scope soon after is a plain SET
with them in its header (one command instead of three): if a write moved the generations in
between, the answer, which may predate the write, is stored with generations no lookup matches
(a miss, never a stale hit).

Generations are seeded from the Redis clock (microseconds) and never restart at
a fixed value: this Redis runs allkeys-lru, so it may evict a generation key
while invalidated entries live on. A missing generation therefore means "no
entry can match" (Get misses, Put seeds a fresh value), never "generation 0",
which would bring the invalidated entries back.

Warming (CACHE_WARM_ENABLED) counts each lookup with a ZINCRBY that rides the
lookup's own pipeline; the set is trimmed to the most requested keys every
second and its counts halve every minute (one replica decays, under a lock), so
it stays small and follows what is popular now. WarmCandidates returns popular
entries close to expiry, each claimed so one worker refetches it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import NoScriptError, RedisError

from cache.roundtrip import Command, RoundTrips
from common import keys, redisio
from common.flickr_methods import METHOD_PERMS, is_search, is_write
from common.settings import CACHE_MAX_TTL_S, Settings

MAX_TTL_S = CACHE_MAX_TTL_S
# Warming: requests with a longer canonical form are not counted (the set stores it whole).
HOT_MEMBER_MAX = 2048
# The popularity set keeps CACHE_HOT_KEEP_FACTOR times CACHE_WARM_TOP keys; counts halve every HOT_DECAY_S.
HOT_DECAY_S = 60
# Counts that decayed below this are dropped.
HOT_FLOOR = 0.25
# A generation outlives every entry stored under it, so its expiry never drops a live entry; it only
# stops idle tokens' keys piling up. A Put renews it when this replica has not renewed it for
# GENERATION_RENEW_S (it then still has more than MAX_TTL_S to live), else it costs no command.
GENERATION_TTL_S = MAX_TTL_S + 3600
GENERATION_RENEW_S = 1800.0
# The replica remembers this many renewals at most (then forgets them all: each costs one renewal).
RENEWALS_MAX = 200_000
# Generations a miss read are used by a Put of the same scope for this long; at most SEEN_MAX scopes.
SEEN_S = 60.0
SEEN_MAX = 100_000

_NOW_US = """
local function now_us()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
"""

# KEYS: token generation, token+method generation, entry, warm claim.
# ARGV: refresh within (s), claim ttl (s). → seconds left, or false
# Only a live entry of the current generations (its header's) is refreshed: an invalidated or
# expired one waits for a real request (warming never brings back what a write or an operator dropped).
_CLAIM = """
local g = redis.call('MGET', KEYS[1], KEYS[2])
if not g[1] or not g[2] then return false end
local head = g[1] .. ':' .. g[2] .. ':'
if redis.call('GETRANGE', KEYS[3], 0, #head - 1) ~= head then return false end
local ttl = redis.call('TTL', KEYS[3])
if ttl < 0 or ttl > tonumber(ARGV[1]) then return false end
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[2]) then return false end
return ttl
"""

# KEYS: token generation, token+method generation, entry.
# ARGV: value, ttl, expires at (unix s), generation ttl, then per generation '1' when its expiry is
# to be renewed (see CacheStore._renewals), then optionally the generations a miss read, which the
# header then carries instead of the current ones (see CacheStore._put_command). → 1
_PUT = (
    _NOW_US
    + """
local g = redis.call('MGET', KEYS[1], KEYS[2])
local function generation(i)
  local v = g[i]
  if not v then
    v = now_us()
    redis.call('SET', KEYS[i], v, 'EX', ARGV[4])
  elseif ARGV[4 + i] == '1' then
    redis.call('EXPIRE', KEYS[i], ARGV[4])
  end
  return v
end
local gen, mgen = generation(1), generation(2)
if ARGV[7] then gen, mgen = ARGV[7], ARGV[8] end
redis.call('SET', KEYS[3], gen .. ':' .. mgen .. ':' .. ARGV[3] .. '\\n' .. ARGV[1], 'EX', ARGV[2])
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


@dataclass(frozen=True)
class GetOp:
    """One lookup of a batch."""

    method: str
    params: Mapping[str, str]
    token: str


@dataclass(frozen=True)
class PutOp:
    """One store of a batch (`ttl_s` already decided: positive)."""

    method: str
    params: Mapping[str, str]
    token: str
    value: bytes
    ttl_s: int


@dataclass(frozen=True)
class Candidate:
    """A popular entry close to expiry, claimed for one caller to refetch."""

    method: str
    params: dict[str, str]
    token: str
    ttl_s: int
    requests: float


def method_label(method: str) -> str:
    """The method as a metric label and stats field: known Flickr methods by name, the rest `other`."""
    return method if method in METHOD_PERMS else "other"


class CacheStore:
    """Reads and writes cached Flickr answers (its client has decode=False: values are bytes).

    Hit and miss counts are only known once a Get's MGET has answered, so they
    ride the next pipeline this store sends (or `flush_stats`, which the app runs
    every second): the shared counters stay one round trip per operation.
    """

    def __init__(self, redis: redisio.Redis, settings: Settings) -> None:
        self._redis = redis
        self._read_ttl = settings.cache_ttl_read_s
        self._search_ttl = settings.cache_ttl_search_s
        self._ttls = settings.cache_ttls
        self.warming = settings.cache_warm_enabled
        self._hot_keep = settings.cache_warm_top * settings.cache_hot_keep_factor
        self._put = redis.register_script(_PUT)
        self._invalidate = redis.register_script(_INVALIDATE)
        self._claim = redis.register_script(_CLAIM)
        # Every script this store runs; each touches only the keys it is given in KEYS.
        self.scripts = (self._put, self._invalidate, self._claim)
        self._pending: Counter[str] = Counter()
        self._renewed: dict[str, float] = {}  # generation key -> when this replica last renewed it
        # (generation key, method generation key) -> the values a miss read there, and when.
        self._seen: dict[tuple[str, str], tuple[bytes, bytes, float]] = {}
        # Redis calls in flight at once (CACHE_REDIS_MAX_IN_FLIGHT); the client's pool has as many
        # connections (cache.app). redis-py's asyncio pool raises MaxConnectionsError past its size
        # instead of waiting, so calls queue here.
        self._slots = asyncio.Semaphore(settings.cache_redis_max_in_flight)
        self._trips = RoundTrips(redis, keep=settings.cache_redis_max_in_flight)

    def _renewals(self, generations: Sequence[str]) -> list[str]:
        """Per generation, '1' when a Put is to renew its expiry (counted as renewed from now), else '0'.

        A renewal this replica sent less than GENERATION_RENEW_S ago left the key more than
        MAX_TTL_S to live, longer than any entry a Put stores. An invalidation rewrites the key with
        a full expiry, and a key that is gone (evicted) is seeded afresh by the Put itself.
        """
        now = time.monotonic()
        if len(self._renewed) > RENEWALS_MAX:
            self._renewed.clear()
        flags = []
        for name in generations:
            if now - self._renewed.get(name, -GENERATION_RENEW_S) < GENERATION_RENEW_S:
                flags.append("0")
            else:
                self._renewed[name] = now
                flags.append("1")
        return flags

    def _forget_renewals(self, generations: Sequence[str]) -> None:
        """A Put that failed may not have renewed them: the next one does."""
        for name in generations:
            self._renewed.pop(name, None)

    def ttl_for(self, method: str, requested: int = 0) -> int:
        """Seconds an answer of `method` may be cached; 0 for methods that are never cached."""
        if is_write(method):
            return 0
        if requested > 0:
            return min(requested, MAX_TTL_S)
        if method in self._ttls:  # CACHE_TTL_OVERRIDES; 0 there means never cached
            return self._ttls[method]
        return self._search_ttl if is_search(method) else self._read_ttl

    def count(self, field: str, method: str) -> None:
        """Count a hit or miss answered without Redis (it rides the next pipeline)."""
        self._pending[field] += 1
        self._pending[f"{field}:{method_label(method)}"] += 1

    async def get(self, method: str, params: Mapping[str, str], token: str) -> Hit | None:
        """The cached answer in the token's current scope, or None."""
        try:
            found = await self._call(
                ("MGET", *_lookup(method, params, token)), hot=self._hot_member(method, params, token)
            )
        except RedisError:
            self.count("misses", method)
            raise
        hit = _hit(found, int(time.time()))
        self.count("hits" if hit else "misses", method)
        return hit

    async def put(self, method: str, params: Mapping[str, str], token: str, value: bytes, ttl_s: int) -> None:
        """Store an answer in the token's current scope for `ttl_s` seconds."""
        generations = _generations(token, method)
        entry = keys.cache_entry(token, keys.cache_digest(method, params, token))
        args = [value, ttl_s, _expiry(ttl_s), GENERATION_TTL_S, *self._renewals(generations)]
        try:
            await self._call(("EVALSHA", self._put.sha, 3, *generations, entry, *args), extra={"puts": 1})
        except RedisError:
            self._forget_renewals(generations)
            raise

    async def invalidate(self, token: str, method: str = "") -> int:
        """Drop every entry of the token (or of the token's method) in O(1); the new generation."""
        generation = keys.cache_generation(token, method)
        return int(await self._call(("EVALSHA", self._invalidate.sha, 1, generation, GENERATION_TTL_S)))

    async def exchange(
        self, gets: Sequence[GetOp], puts: Sequence[PutOp]
    ) -> tuple[list[Hit | RedisError | None], list[RedisError | None]]:
        """Every Get and Put of a batch in one round trip (`RoundTrips`): each answer or its error.

        A Get is the same MGET as its single form; a Put the same script call, or a plain SET
        after a recent miss of its scope (`_put_command`). The hit/miss/put counts are not sent
        with the batch: they wait for a single call's pipeline or the app's flush every second, so
        a busy replica sends a few HINCRBYs a second whatever its load.
        """
        commands: list[Command] = []
        at: list[int] = []  # position of each operation's command
        for g in gets:
            at.append(len(commands))
            commands.append(("MGET", *_lookup(g.method, g.params, g.token)))
            if (member := self._hot_member(g.method, g.params, g.token)) is not None:
                commands.append(("ZINCRBY", keys.CACHE_HOT, 1, member))
        for p in puts:
            at.append(len(commands))
            commands.append(self._put_command(p))
        if puts:
            self._pending["puts"] += len(puts)
        results: list[Any]
        try:
            async with self._slots:
                replies = await self._trips.run(commands)
            results = [replies[i] for i in at]
        except RedisError as exc:
            results = [exc] * len(at)
        if stale := [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]:
            results = await self._rerun([commands[at[i]] for i in stale], stale, results)
        found: list[Hit | RedisError | None] = []
        now = int(time.time())
        for g, r in zip(gets, results, strict=False):
            answer = r if isinstance(r, RedisError) else _hit(r, now)
            self.count("hits" if isinstance(answer, Hit) else "misses", g.method)
            found.append(answer)
            if not isinstance(r, RedisError) and answer is None:
                self._saw(g, r)
        stored = [r if isinstance(r, RedisError) else None for r in results[len(gets) :]]
        for p, r in zip(puts, stored, strict=True):
            if r is not None:
                self._forget_renewals(_generations(p.token, p.method))
        return found, stored

    def _saw(self, g: GetOp, reply: Any) -> None:
        """Remember the generations a miss read (or forget them: a generation was missing)."""
        scope = cast("tuple[str, str]", tuple(_generations(g.token, g.method)))
        generation, method_generation, _ = reply
        if generation is None or method_generation is None:
            self._seen.pop(scope, None)
            return
        if len(self._seen) > SEEN_MAX:
            self._seen.clear()
        self._seen[scope] = (generation, method_generation, time.monotonic())

    def _put_command(self, p: PutOp) -> Command:
        """A Put as one SET with the generations a recent miss of its scope read, else the script.

        The script (which renews the generations' expiry, and seeds a missing one) still stores
        the generations the miss read when there are some: the answer may predate a later write.
        """
        generations = _generations(p.token, p.method)
        entry = keys.cache_entry(p.token, keys.cache_digest(p.method, p.params, p.token))
        expires = _expiry(p.ttl_s)
        renew = self._renewals(generations)
        seen = self._seen.get((generations[0], generations[1]))
        if seen is not None and time.monotonic() - seen[2] >= SEEN_S:
            seen = None
        if seen is not None and "1" not in renew:
            return ("SET", entry, _header(seen[0], seen[1], expires) + p.value, "EX", p.ttl_s)
        args = (p.value, p.ttl_s, expires, GENERATION_TTL_S, *renew, *(seen[:2] if seen else ()))
        return ("EVALSHA", self._put.sha, 3, *generations, entry, *args)

    async def _rerun(self, again: list[Command], stale: list[int], results: list[Any]) -> list[Any]:
        """Reload the scripts (Redis restarted or flushed them) and send the calls that met NOSCRIPT again."""
        try:
            async with self._slots:
                await self.load_scripts()
                replies = await self._trips.run(again)
        except RedisError as exc:
            replies = [exc] * len(again)
        results = list(results)
        for i, r in zip(stale, replies, strict=True):
            results[i] = r
        return results

    def _hot_member(self, method: str, params: Mapping[str, str], token: str) -> str | None:
        """The popularity set's member for a lookup (warming only; None when off or too long)."""
        if not self.warming:
            return None
        canonical = keys.cache_canonical(method, params, token)
        return canonical if len(canonical.encode()) <= HOT_MEMBER_MAX else None

    async def close(self) -> None:
        """Close the batch path's connections (the client itself is the app's to close)."""
        await self._trips.close()

    async def load_scripts(self) -> None:
        """Load the Lua scripts (one round trip) so the first calls meet no NOSCRIPT."""
        pipe = self._redis.pipeline(transaction=False)
        for script in self.scripts:
            pipe.script_load(script.script)
        for script, sha in zip(self.scripts, await pipe.execute(), strict=True):
            script.sha = sha.decode() if isinstance(sha, bytes) else sha

    async def flush_stats(self) -> None:
        """Send the hit and miss counts still held by this replica."""
        if self._pending:
            pipe = self._redis.pipeline(transaction=False)
            await self._execute(pipe, self._queue_stats(pipe, Counter()))

    async def stats(self) -> Stats:
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
        counters = Counter({(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()})
        counters.update(flushed)  # our own unflushed counts were sent after HGETALL read the hash
        return Stats(
            hits=counters["hits"],
            misses=counters["misses"],
            puts=counters["puts"],
            keys=int(dbsize),
            used_memory_bytes=int(memory.get("used_memory", 0)),
            evicted_keys=int(stats.get("evicted_keys", 0)),
            methods=_per_method(counters),
        )

    async def maintain_hot(self) -> None:
        """Keep the popularity set to the most requested keys; halve its counts once a minute.

        Every replica trims (idempotent); the decay runs where the lock was taken, so the
        counts halve once per HOT_DECAY_S however many replicas there are. The very first pass
        only starts the clock: counts a second old are not halved as if a minute had passed.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.zremrangebyrank(keys.CACHE_HOT, 0, -(self._hot_keep + 1))
        pipe.set(keys.CACHE_HOT_DECAY, b"1", nx=True, ex=HOT_DECAY_S)
        pipe.set(keys.CACHE_HOT_SINCE, b"1", nx=True)
        _, decay, first = await pipe.execute()
        if decay and not first:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zunionstore(keys.CACHE_HOT, {keys.CACHE_HOT: 0.5})
            pipe.zremrangebyscore(keys.CACHE_HOT, "-inf", f"({HOT_FLOOR}")
            await pipe.execute()

    async def warm_candidates(
        self, top: int, min_requests: float, within_s: int, limit: int, claim_s: int
    ) -> list[Candidate]:
        """Up to `limit` of the `top` most requested keys whose entry has at most `within_s` left, claimed."""
        ranked = await self._redis.zrevrange(keys.CACHE_HOT, 0, top - 1, withscores=True)
        popular: list[Candidate] = []
        for member, score in cast("list[tuple[bytes, float]]", ranked):
            if score < min_requests:
                break  # ranked by count: the rest are less popular still
            parsed = _parse_canonical(member)
            if parsed is None or self.ttl_for(parsed[0]) == 0:
                await self._redis.zrem(keys.CACHE_HOT, member)
                continue
            popular.append(Candidate(*parsed, ttl_s=0, requests=float(score)))
        claimed: list[Candidate] = []
        while popular and len(claimed) < limit:
            batch, popular = popular[: limit - len(claimed)], popular[limit - len(claimed) :]
            claimed += [
                Candidate(c.method, c.params, c.token, int(ttl), c.requests)
                for c, ttl in zip(batch, await self._claim_batch(batch, within_s, claim_s), strict=True)
                if ttl is not None
            ]
        return claimed

    async def _claim_batch(self, batch: list[Candidate], within_s: int, claim_s: int) -> list[Any]:
        """Run the claim script for each candidate in one pipeline (reloading the script once if gone)."""
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for c in batch:
                digest = keys.cache_digest(c.method, c.params, c.token)
                entry, claim = keys.cache_entry(c.token, digest), keys.cache_warm_claim(c.token, digest)
                script_keys = [*_generations(c.token, c.method), entry, claim]
                pipe.evalsha(self._claim.sha, len(script_keys), *script_keys, within_s, claim_s)
            async with self._slots:
                results = list(await pipe.execute(raise_on_error=False))
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self.load_scripts()
                continue
            if errors := [r for r in results if isinstance(r, Exception)]:
                raise errors[0]
            return results
        raise AssertionError("unreachable")

    async def _call(
        self, command: Command, extra: Mapping[str, int] | None = None, hot: str | None = None
    ) -> Any:
        """One command plus the pending stats (and the warming count `hot`) in one pipeline (one round trip).

        A script is called by EVALSHA, not `script(client=pipe)`: redis-py then sends SCRIPT
        EXISTS before every pipeline. A NOSCRIPT answer (Redis restarted or flushed its scripts)
        reloads the scripts and runs the command again, without counting the stats twice.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command(*command)
        if hot is not None:
            pipe.zincrby(keys.CACHE_HOT, 1, hot)
        taken = self._queue_stats(pipe, Counter(extra or {}))
        result, *_ = await self._execute(pipe, taken)
        if isinstance(result, NoScriptError):
            async with self._slots:
                await self.load_scripts()
                return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
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


@dataclass(frozen=True)
class Stats:
    """Counts shared by every replica, plus Redis' own view."""

    hits: int
    misses: int
    puts: int
    keys: int
    used_memory_bytes: int
    evicted_keys: int
    # method → (hits, misses), most looked-up first
    methods: dict[str, tuple[int, int]]


def _per_method(counters: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    methods = {f.partition(":")[2] for f in counters if f.startswith(("hits:", "misses:"))}
    pairs = {m: (counters.get(f"hits:{m}", 0), counters.get(f"misses:{m}", 0)) for m in methods}
    return dict(sorted(pairs.items(), key=lambda item: (-sum(item[1]), item[0])))


def _parse_canonical(member: bytes | str) -> tuple[str, dict[str, str], str] | None:
    """(method, params, token) from a CACHE_HOT member, or None if it is not one."""
    try:
        method, pairs, token = json.loads(member)
        params = {str(k): str(v) for k, v in pairs}
    except (ValueError, TypeError):
        return None
    if not isinstance(method, str) or not isinstance(token, str):
        return None
    return method, params, token


def _hit(reply: Any, now: int) -> Hit | None:
    """A Get's MGET reply (generation, method generation, entry) as a Hit, or None for a miss.

    A hit needs both generations and an entry whose header carries them; its seconds left come
    from the header's expiry (at least 1: the key still exists).
    """
    generation, method_generation, entry = reply
    if generation is None or method_generation is None or entry is None:
        return None
    header, newline, value = entry.partition(b"\n")
    stored, _, rest = header.partition(b":")
    stored_method, _, expires = rest.partition(b":")
    if not newline or stored != generation or stored_method != method_generation or not expires.isdigit():
        return None
    return Hit(value, min(max(int(expires) - now, 1), MAX_TTL_S))


def _header(generation: bytes, method_generation: bytes, expires_at: int) -> bytes:
    """The start of an entry's value (the `_PUT` script writes the same)."""
    return b"%s:%s:%d\n" % (generation, method_generation, expires_at)


def _expiry(ttl_s: int) -> int:
    """When an entry stored now for `ttl_s` expires, in unix seconds (rounded down)."""
    return int(time.time()) + ttl_s


def _generations(token: str, method: str) -> list[str]:
    return [keys.cache_generation(token), keys.cache_generation(token, method)]


def _lookup(method: str, params: Mapping[str, str], token: str) -> list[str]:
    """A Get's keys: both generations, then the entry."""
    return [*_generations(token, method), keys.cache_entry(token, keys.cache_digest(method, params, token))]
