"""Hot job state: a copy of each job's status fields in the queue Redis, so status reads skip MongoDB.

MongoDB stays the record; the copy is written after it and only ever moves forward:

- a copy is one JSON string key holding the fields of FIELDS and the document's revision `rev`;
  one Lua step (GET, then SET) decides each write, and the first copy of a new job is a plain SET;
- a whole snapshot (`put`: the gateway at accept, a status read that had to go to MongoDB)
  replaces only a copy of a lower revision (or a bare marker of the same one);
- a transition (`apply`, called by JobStore after its compare-and-set won) is the very change made
  in MongoDB, applied only to a whole copy at exactly `rev - 1` (or several changes in a row from
  `rev - n`: a worker's claim whose copy waited goes with the outcome that followed it). Anything
  else (no copy, a missed revision) leaves a marker holding just the revision: no older write can
  land after it, and readers go to MongoDB (whose answer is put back as a snapshot).

So a reader sees the copy at some revision MongoDB already passed through, never one older than a
copy it saw before. A copy lives `JOB_HOT_TTL_S` (24 h) after its last write; results larger than
`JOB_HOT_MAX_RESULT_BYTES` stay in MongoDB only (the copy says so and readers go there). Nothing
secret is copied: only the fields of FIELDS, which the Job message shows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import jsontext, keys, redisio, resp
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

# KEYS[1]: the copy (a JSON object; a bare marker is {"rev": n}). ARGV: rev, ttl, mode (put|apply),
# then the whole copy (put) or the changes (apply: a list of {"set": {}, "inc": {}, "min": {}, "unset": []},
# the transitions that took the job from rev - #list to rev, in order: a claim whose copy was
# deferred goes with the outcome that followed it). Two commands a write (GET, SET), whatever its size.
_WRITE = """
local rev = tonumber(ARGV[1])
local raw = redis.call('GET', KEYS[1])
local cur = raw and cjson.decode(raw) or nil
local held = cur and tonumber(cur.rev) or -1
local whole = cur ~= nil and cur.job_id ~= nil
if ARGV[3] == 'put' then
  if held > rev or (held == rev and whole) then return 0 end
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[2])
  return 1
end
if held >= rev then return 0 end
local changes = cjson.decode(ARGV[4])
if held ~= rev - #changes or not whole then
  redis.call('SET', KEYS[1], cjson.encode({rev = rev}), 'EX', ARGV[2])
  return 2
end
for _, change in ipairs(changes) do
  for k, v in pairs(change.set) do cur[k] = v end
  for k, v in pairs(change.inc) do cur[k] = (tonumber(cur[k]) or 0) + v end
  for k, v in pairs(change.min) do
    if cur[k] == nil or v < cur[k] then cur[k] = v end
  end
  for _, k in ipairs(change.unset) do cur[k] = nil end
end
cur.rev = rev
redis.call('SET', KEYS[1], cjson.encode(cur), 'EX', ARGV[2])
return 1
"""


def _encode(kind: str, value: Any) -> Any:
    if kind == INT:
        return int(value)
    if kind == BOOL:
        return bool(value)
    if kind == TIME:
        return int(value.timestamp() * 1000)
    if kind == JSON:
        return value
    return str(value)


def _decode(kind: str, raw: Any) -> Any:
    if kind == INT:
        return int(raw)
    if kind == BOOL:
        return bool(raw)
    if kind == TIME:
        return datetime.fromtimestamp(int(raw) / 1000, UTC)
    if kind == JSON:
        # Lua's cjson writes an empty object as {} but may hand back an empty list for one.
        return raw if raw != [] else {}
    return str(raw)


def decode(held: dict[str, Any]) -> Doc | None:
    """The job document fields a copy holds; None for a marker or a copy whose result lives in MongoDB."""
    if "job_id" not in held or held.get(RESULT_ELSEWHERE):
        return None
    doc: Doc = {name: _decode(kind, held[name]) for name, kind in FIELDS.items() if name in held}
    doc["rev"] = int(held["rev"])
    return doc


def _dumps(value: Any) -> str:
    return jsontext.dumps(value)


class HotState:
    """Reads and writes the hot copies in one Redis."""

    def __init__(self, redis: redisio.Redis, ttl_s: int, max_result_bytes: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_result = max_result_bytes
        self._write = redis.register_script(_WRITE)
        self.wire: resp.Multiplexed | None = None  # pipelines go over it when set (common.resp)

    @classmethod
    def from_settings(
        cls, redis: redisio.Redis, settings: Settings, wire: resp.Multiplexed | None = None
    ) -> HotState | None:
        """The hot state `settings` ask for (None when JOB_HOT_TTL_S is 0); `wire` carries its pipelines."""
        if settings.job_hot_ttl_s <= 0:
            return None
        hot = cls(redis, settings.job_hot_ttl_s, settings.job_hot_max_result_bytes)
        hot.wire = wire
        return hot

    def _fields(self, values: dict[str, Any], unset: list[str]) -> dict[str, Any]:
        """FIELDS of `values` encoded; None values and too large results go to `unset`."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            kind = FIELDS.get(name)
            if kind is None:
                continue
            if value is None:
                unset.append(name)
            elif name == "result_json" and len(str(value).encode()) > self._max_result:
                out[RESULT_ELSEWHERE] = True
                unset.append(name)
            else:
                out[name] = _encode(kind, value)
                if name == "result_json":
                    unset.append(RESULT_ELSEWHERE)
        return out

    def pipeline(self) -> Pipeline:
        """A pipeline on the copies' Redis (for `put_on` / `apply_on`), to send with `run`."""
        return self._redis.pipeline(transaction=False)

    async def run(self, pipe: Pipeline) -> list[Any]:
        """The pipeline's replies, errors in place (over the lean connection when there is one)."""
        return await resp.run(pipe, self.wire)

    def snapshot(self, doc: Doc) -> str:
        """The copy of `doc` as stored (JSON: its FIELDS and its revision)."""
        return _dumps({**self._fields(doc, []), "rev": int(doc.get("rev", 0))})

    def put_new_on(self, pipe: Pipeline, doc: Doc) -> None:
        """Queue the first copy of a job just accepted (one SET: no copy of a new job id can exist)."""
        pipe.set(keys.job_state(doc["job_id"]), self.snapshot(doc), ex=self._ttl_s, nx=True)

    def put_on(self, pipe: Pipeline, doc: Doc) -> None:
        """Queue a whole snapshot of `doc` (at its `rev`) on a pipeline (no round trip of its own)."""
        args: list[str | int] = [int(doc.get("rev", 0)), self._ttl_s, "put", self.snapshot(doc)]
        pipe.eval(_WRITE, 1, keys.job_state(doc["job_id"]), *args)

    async def put(self, doc: Doc) -> None:
        """Write a whole snapshot of `doc` unless a copy at its revision or later is held (best effort)."""
        try:
            await self._write(
                keys=[keys.job_state(doc["job_id"])],
                args=[int(doc.get("rev", 0)), self._ttl_s, "put", self.snapshot(doc)],
            )
        except RedisError as exc:
            log.warning("hot state snapshot not written: %s", type(exc).__name__)

    def _change(self, update: dict[str, Any]) -> dict[str, Any]:
        unset = [name for name in update.get("$unset", {}) if name in FIELDS]
        fields = self._fields(update.get("$set", {}), unset)
        inc = {k: int(v) for k, v in update.get("$inc", {}).items() if FIELDS.get(k) == INT}
        low = {k: _encode(FIELDS[k], v) for k, v in update.get("$min", {}).items() if k in FIELDS}
        return {"set": fields, "inc": inc, "min": low, "unset": unset}

    def change_args(self, rev: int, updates: Sequence[dict[str, Any]]) -> list[str | int]:
        """The script arguments applying the MongoDB `updates` that took a job to `rev`, in order."""
        return [rev, self._ttl_s, "apply", _dumps([self._change(u) for u in updates])]

    def apply_on(self, pipe: Pipeline, job_id: str, rev: int, updates: Sequence[dict[str, Any]]) -> None:
        """Queue `apply` on a pipeline (the caller handles a failed reply by calling `drop`)."""
        pipe.eval(_WRITE, 1, keys.job_state(job_id), *self.change_args(rev, updates))

    async def apply(self, job_id: str, rev: int, *updates: dict[str, Any]) -> None:
        """Apply the MongoDB `updates` that took the job to `rev` (best effort; see the module doc)."""
        try:
            await self._write(keys=[keys.job_state(job_id)], args=self.change_args(rev, updates))
        except RedisError as exc:
            log.warning("hot state not updated (%s); dropping the copy", type(exc).__name__)
            await self.drop(job_id)

    async def drop(self, job_id: str) -> None:
        """Remove a copy that may be behind MongoDB, so readers go there."""
        try:
            await self._redis.delete(keys.job_state(job_id))
        except RedisError:
            log.warning("hot state copy of %s could not be dropped", job_id)

    async def get(self, job_id: str) -> Doc | None:
        """The job's fields from a whole copy; None when there is none (or Redis fails)."""
        try:
            raw = await self._redis.get(keys.job_state(job_id))
        except RedisError as exc:
            log.warning("hot state unreadable: %s", type(exc).__name__)
            return None
        if not raw:
            return None
        try:
            held = json.loads(raw)
        except ValueError:
            return None
        return decode(held) if isinstance(held, dict) else None
