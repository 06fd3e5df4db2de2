"""Fairness while a flood arrives: a small token's jobs, alone and while another token floods.

One client (the admin key) has two users with tokens of their own. The small token submits
`small` jobs on a fixed schedule (one every `period_s`), first alone, then while the other
token submits `flood` jobs at `flood_concurrency` concurrent calls (the small schedule starts
`lead_s` after the flood does, so the flood is arriving the whole time). A small job's latency
runs from the moment it was due to be submitted to the `finished_at` its worker recorded in
MongoDB (submission included); the small jobs' documents are read once they are all final,
every half second, so the gateway is never polled. Both run on one stack with the bench
settings (Flickr budget roomy: the CPU is the contended resource).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient

from bench import driver, stacks
from devstack.stack import ProcessStack

FINAL = ("completed", "failed", "expired", "cancelled")


def _finished_ms(
    mongo_url: str, db: str, sent: list[tuple[str, float]], timeout_s: float = 300.0
) -> list[float]:
    """Due → finished_at of each job, once all are final."""
    ids = [job_id for job_id, _ in sent]
    due = dict(sent)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            docs = list(
                client[db]["jobs"].find(
                    {"job_id": {"$in": ids}}, {"job_id": 1, "status": 1, "finished_at": 1}
                )
            )
            if len(docs) == len(ids) and all(d["status"] in FINAL for d in docs):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(d['status'] not in FINAL for d in docs)} small jobs never finished")
            time.sleep(0.5)
    finally:
        client.close()
    return [(_ts(d["finished_at"]) - due[d["job_id"]]) * 1000 for d in docs]


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _small_config(stack: ProcessStack, user: str, n: int, period_s: float, tag: str) -> dict[str, Any]:
    return {
        "proto": "grpc",
        "target": f"127.0.0.1:{stack.ports.gateway}",
        "api_key": stacks.admin_key(stack),
        "users": [user],
        "tag": tag,
        "mode": "open",
        "requests": n,
        "rate": 1 / period_s,
        "keep_ids": True,
    }


def _stats(ms: list[float], submit: driver.Merged) -> dict[str, float]:
    return {
        "p50_ms": round(driver.pct(ms, 0.5), 1),
        "p99_ms": round(driver.pct(ms, 0.99), 1),
        "submit_p50_ms": round(driver.pct(submit.latencies, 0.5), 1),
        "submit_p99_ms": round(driver.pct(submit.latencies, 0.99), 1),
    }


def measure(
    stack: ProcessStack,
    small: int,
    period_s: float,
    flood: int,
    flood_concurrency: int,
    processes: int = 2,
    lead_s: float = 1.0,
) -> dict[str, Any]:
    settings = stack.settings
    stacks.seed_users(stack, ["small-user", "flood-user"])
    small_cfg = _small_config(stack, "small-user", small, period_s, "alone")
    warm = driver.run({**small_cfg, "requests": 5, "tag": "warm-up"}, 1).require("fairness warm-up")
    _finished_ms(settings.mongo_url, settings.mongo_db, warm.sent)
    alone = driver.run(small_cfg, 1).require("small jobs alone")
    alone_ms = _finished_ms(settings.mongo_url, settings.mongo_db, alone.sent)

    flood_cfg = {
        "proto": "grpc",
        "target": f"127.0.0.1:{stack.ports.gateway}",
        "api_key": stacks.admin_key(stack),
        "users": ["flood-user"],
        "tag": "flood",
        "mode": "closed",
        "requests": flood,
        "concurrency": flood_concurrency,
        "retry_backpressure": True,
    }
    flood_pool = driver.DriverPool(driver.split(flood_cfg, processes))
    small_pool = driver.DriverPool([{**small_cfg, "tag": "during"}])
    try:
        flood_pool.go()
        time.sleep(lead_s)
        small_pool.go()
        during = small_pool.results().require("small jobs during the flood")
        flooded = flood_pool.results().require("flood")
    finally:
        flood_pool.kill()
        small_pool.kill()
    during_ms = _finished_ms(settings.mongo_url, settings.mongo_db, during.sent)
    a, d = _stats(alone_ms, alone), _stats(during_ms, during)
    return {
        "small_jobs": small,
        "small_period_ms": round(period_s * 1000),
        "flood_jobs": flood,
        "flood_concurrency": flood_concurrency,
        "flood_submit": flooded.summary(),
        "small_alone": a,
        "small_during_flood": d,
        "p50_ratio": round(d["p50_ms"] / a["p50_ms"], 2) if a["p50_ms"] else None,
        "p99_ratio": round(d["p99_ms"] / a["p99_ms"], 2) if a["p99_ms"] else None,
        "flood_still_submitting_when_small_done": flooded.seconds > lead_s + small * period_s,
    }


def run(
    small: int, period_s: float, flood: int, flood_concurrency: int, processes: int = 2
) -> dict[str, Any]:
    with stacks.running(workers=2, movers=1) as stack:
        return measure(stack, small, period_s, flood, flood_concurrency, processes)
