"""Server-side operation counters of the stores, read before and after a measured window.

* Redis: `INFO commandstats` (calls per command). A pipeline's commands are counted one by
  one; a script counts once as EVALSHA/EVAL/FCALL and every command it runs is counted again
  under its own name, so `executed` (every command, script wrappers excluded) is what the
  per-job target counts, and `script_calls` shows the wrappers.
* MongoDB (SecantusDB): `top` per namespace (SecantusDB counts per command, as mongod's
  `top` does: a 50-document insert_many is one insert) — writes are the write-lock
  commands (insert, update, delete, findAndModify, createIndexes…), reads the read-lock ones
  (find, getMore, aggregate, count…) — and `serverStatus.opcounters` for the whole server.
"""

from __future__ import annotations

from typing import Any

import redis
from pymongo import MongoClient

SCRIPT_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})
# Our own probes, not the services' work.
OWN_REDIS_COMMANDS = frozenset({"info"})
SKIP_NAMESPACES = ("admin.", "config.", "local.")
TOP_SECTIONS = ("insert", "update", "remove", "queries", "getmore", "commands", "readLock", "writeLock")


def redis_calls(url: str) -> dict[str, int]:
    """Calls per command name so far (`INFO commandstats`)."""
    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_delta(
    before: dict[str, int], after: dict[str, int], jobs: int, own: dict[str, int] | None = None
) -> dict[str, Any]:
    """Commands used between two `redis_calls` snapshots, in all and per job; `own`: the bench's
    own commands in between (e.g. its completion polls), taken out."""
    own = own or {}
    delta = {
        k: after.get(k, 0) - before.get(k, 0) - own.get(k, 0) for k in after if k not in OWN_REDIS_COMMANDS
    }
    delta = {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}
    scripts = sum(v for k, v in delta.items() if k in SCRIPT_COMMANDS)
    total = sum(delta.values())
    n = max(jobs, 1)
    return {
        "total_calls": total,
        "script_calls": scripts,
        "executed": total - scripts,
        "total_per_job": round(total / n, 3),
        "executed_per_job": round((total - scripts) / n, 3),
        "per_job": {k: round(v / n, 3) for k, v in delta.items()},
    }


def mongo_counters(url: str) -> dict[str, Any]:
    """`serverStatus.opcounters` and `top` counts per namespace so far."""
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    try:
        status = client.admin.command("serverStatus")
        top = client.admin.command("top")["totals"]
    finally:
        client.close()
    namespaces = {
        ns: {s: int(v[s]["count"]) for s in TOP_SECTIONS if s in v}
        for ns, v in top.items()
        if isinstance(v, dict) and not ns.startswith(SKIP_NAMESPACES)
    }
    return {"opcounters": {k: int(v) for k, v in status["opcounters"].items()}, "top": namespaces}


def mongo_delta(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, Any]:
    """MongoDB commands between two `mongo_counters` snapshots: writes and reads per job, by namespace."""
    n = max(jobs, 1)
    by_ns: dict[str, dict[str, int]] = {}
    for ns, counts in after["top"].items():
        old = before["top"].get(ns, {})
        diff = {s: c - old.get(s, 0) for s, c in counts.items()}
        if any(diff.values()):
            by_ns[ns] = {s: c for s, c in diff.items() if c}
    writes = sum(c.get("writeLock", 0) for c in by_ns.values())
    reads = sum(c.get("readLock", 0) for c in by_ns.values())
    ops = {k: v - before["opcounters"].get(k, 0) for k, v in after["opcounters"].items()}
    return {
        "writes": writes,
        "reads": reads,
        "writes_per_job": round(writes / n, 3),
        "reads_per_job": round(reads / n, 3),
        "opcounters_per_job": {k: round(v / n, 3) for k, v in ops.items()},
        "by_namespace_per_job": {
            ns: {s: round(c / n, 4) for s, c in counts.items()} for ns, counts in sorted(by_ns.items())
        },
    }
