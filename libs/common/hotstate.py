"""Hot job state: a copy of each job's status fields in the queue Redis, so status reads skip MongoDB.

MongoDB stays the record; the copy is written after it and only ever moves forward:

- every copy carries the job document's revision `rev`, and one Lua step decides each write;
- a whole snapshot (`put`: the gateway at accept, a status read that had to go to MongoDB)
  replaces only a copy of a lower revision (or a bare marker of the same one);
- a transition (`apply`, called by JobStore after its compare-and-set won) is the very change made
  in MongoDB, applied only to a whole copy at exactly `rev - 1`. Anything else (no copy, a missed
  revision) leaves a marker holding just the revision: no older write can land after it, and
  readers go to MongoDB (whose answer is put back as a snapshot).

So a reader sees the copy at some revision MongoDB already passed through, never one older than a
copy it saw before. A copy lives `JOB_HOT_TTL_S` (24 h) after its last write; results larger than
`JOB_HOT_MAX_RESULT_BYTES` stay in MongoDB only (the copy says so and readers go there). Nothing
secret is copied: only the fields of FIELDS, which the Job message shows.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import keys, redisio
from common.mongo import Doc
from common.settings import Settings

log = logging.getLogger(__name__)

STR, INT, BOOL, TIME, JSON = "str", "int", "bool", "time", "json"
# The document fields a status read needs (what gateway.convert.job_to_proto reads), by encoding.
FIELDS: dict[str, str] = {
    "job_id": STR,
    "user_id": STR,
    "client_id": STR,
    "method": STR,
    "target": STR,
    "priority": STR,
    "status": STR,
    "callback_url": STR,
    "trace_id": STR,
    "meta_json": STR,
    "result_json": STR,
    "params": JSON,
    "error": JSON,
    "attempts": INT,
    "max_attempts": INT,
    "from_cache": BOOL,
    "cache_bypass": BOOL,  # Job.cache_bypassed
    "created_at": TIME,
    "updated_at": TIME,
    "started_at": TIME,
    "finished_at": TIME,
}
# Set instead of result_json when the result is too large to keep hot.
RESULT_ELSEWHERE = "result_elsewhere"

# KEYS[1]: the copy. ARGV: rev, ttl, mode (put|apply), set (JSON object), inc, min (objects), unset (array).
_WRITE = """
local rev = tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev') or '-1')
local whole = redis.call('HEXISTS', KEYS[1], 'job_id') == 1
local function finish(code)
  redis.call('HSET', KEYS[1], 'rev', rev)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return code
end
local function set_all(fields)
  for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
end
if ARGV[3] == 'put' then
  if cur > rev or (cur == rev and whole) then return 0 end
  redis.call('DEL', KEYS[1])
  set_all(cjson.decode(ARGV[4]))
  return finish(1)
end
if cur >= rev then return 0 end
if cur ~= rev - 1 or not whole then
  redis.call('DEL', KEYS[1])
  return finish(2)
end
set_all(cjson.decode(ARGV[4]))
for k, v in pairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', KEYS[1], k, v) end
for k, v in pairs(cjson.decode(ARGV[6])) do
  local old = tonumber(redis.call('HGET', KEYS[1], k) or 'x')
  if old == nil or tonumber(v) < old then redis.call('HSET', KEYS[1], k, v) end
end
for _, k in ipairs(cjson.decode(ARGV[7])) do redis.call('HDEL', KEYS[1], k) end
return finish(1)
"""


def _encode(kind: str, value: Any) -> str:
    if kind == INT:
        return str(int(value))
    if kind == BOOL:
        return "1" if value else "0"
    if kind == TIME:
        return str(int(value.timestamp() * 1000))
    if kind == JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return str(value)


def _decode(kind: str, raw: str) -> Any:
    if kind == INT:
        return int(raw)
    if kind == BOOL:
        return raw == "1"
    if kind == TIME:
        return datetime.fromtimestamp(int(raw) / 1000, UTC)
    if kind == JSON:
        return json.loads(raw)
    return raw


def decode(held: dict[str, str]) -> Doc | None:
    """The job document fields a copy holds; None for a marker or a copy whose result lives in MongoDB."""
    if "job_id" not in held or held.get(RESULT_ELSEWHERE) == "1":
        return None
    doc: Doc = {name: _decode(kind, held[name]) for name, kind in FIELDS.items() if name in held}
    doc["rev"] = int(held["rev"])
    return doc


class HotState:
    """Reads and writes the hot copies in one Redis."""

    def __init__(self, redis: redisio.Redis, ttl_s: int, max_result_bytes: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_result = max_result_bytes
        self._write = redis.register_script(_WRITE)

    @classmethod
    def from_settings(cls, redis: redisio.Redis, settings: Settings) -> HotState | None:
        """The hot state `settings` ask for (None when JOB_HOT_TTL_S is 0)."""
        if settings.job_hot_ttl_s <= 0:
            return None
        return cls(redis, settings.job_hot_ttl_s, settings.job_hot_max_result_bytes)

    def _fields(self, values: dict[str, Any], unset: list[str]) -> dict[str, str]:
        """FIELDS of `values` encoded; None values and too large results go to `unset`."""
        out: dict[str, str] = {}
        for name, value in values.items():
            kind = FIELDS.get(name)
            if kind is None:
                continue
            if value is None:
                unset.append(name)
            elif name == "result_json" and len(str(value).encode()) > self._max_result:
                out[RESULT_ELSEWHERE] = "1"
                unset.append(name)
            else:
                out[name] = _encode(kind, value)
                if name == "result_json":
                    unset.append(RESULT_ELSEWHERE)
        return out

    def _snapshot_args(self, doc: Doc) -> list[str | int]:
        fields = self._fields(doc, [])
        return [int(doc.get("rev", 0)), self._ttl_s, "put", json.dumps(fields), "{}", "{}", "[]"]

    async def put_on(self, pipe: Pipeline, doc: Doc) -> None:
        """Queue a whole snapshot of `doc` (at its `rev`) on a pipeline (no round trip of its own)."""
        await self._write(keys=[keys.job_state(doc["job_id"])], args=self._snapshot_args(doc), client=pipe)

    async def put(self, doc: Doc) -> None:
        """Write a whole snapshot of `doc` unless a copy at its revision or later is held (best effort)."""
        try:
            await self._write(keys=[keys.job_state(doc["job_id"])], args=self._snapshot_args(doc))
        except RedisError as exc:
            log.warning("hot state snapshot not written: %s", type(exc).__name__)

    async def apply(self, job_id: str, rev: int, update: dict[str, Any]) -> None:
        """Apply the MongoDB `update` that took the job to `rev` (best effort; see the module doc)."""
        unset = [name for name in update.get("$unset", {}) if name in FIELDS]
        fields = self._fields(update.get("$set", {}), unset)
        inc = {k: int(v) for k, v in update.get("$inc", {}).items() if FIELDS.get(k) == INT}
        low = {k: _encode(FIELDS[k], v) for k, v in update.get("$min", {}).items() if k in FIELDS}
        args: list[str | int] = [rev, self._ttl_s, "apply", json.dumps(fields), json.dumps(inc)]
        args += [json.dumps(low), json.dumps(unset)]
        try:
            await self._write(keys=[keys.job_state(job_id)], args=args)
        except RedisError as exc:
            # The copy may now be behind MongoDB: drop it so readers go there.
            log.warning("hot state not updated (%s); dropping the copy", type(exc).__name__)
            try:
                await self._redis.delete(keys.job_state(job_id))
            except RedisError:
                log.warning("hot state copy of %s could not be dropped", job_id)

    async def get(self, job_id: str) -> Doc | None:
        """The job's fields from a whole copy; None when there is none (or Redis fails)."""
        try:
            held = {str(k): str(v) for k, v in (await self._redis.hgetall(keys.job_state(job_id))).items()}
        except RedisError as exc:
            log.warning("hot state unreadable: %s", type(exc).__name__)
            return None
        return decode(held) if held else None
