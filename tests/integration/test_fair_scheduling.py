"""The mover's fair scheduling against a real Redis: floods, client weights, priorities, retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from common import keys, tokenqueue
from common.jobs import JobEntry
from common.settings import Settings
from flickrhub.v1 import jobs_pb2
from mover import upkeep
from mover.mover import Mover
from sandbox.state import Fault
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from worker.app import WorkerApp

SMALL_USER = "small-user"


def _entry(n: int, token: str, client: str = "", priority: str = "normal") -> JobEntry:
    return JobEntry(
        job_id=f"{token}-{priority}-{n}",
        token=token,
        user_id="u",
        method="flickr.test.echo",
        target="rest",
        params={"n": str(n)},
        max_attempts=3,
        priority=priority,
        client_id=client,
    )


async def _fill(redis: Any, entries: list[JobEntry]) -> None:
    pipe = redis.pipeline(transaction=False)
    for entry in entries:
        tokenqueue.enqueue(pipe, entry)
    await pipe.execute()


async def _take_work(redis: Any) -> list[dict[str, str]]:
    """What the mover appended to the rest work stream since last time (then finishes it, as workers do)."""
    stream = keys.work_stream("rest")
    entries = await redis.xrange(stream)
    if entries:
        pipe = redis.pipeline(transaction=False)
        pipe.xdel(stream, *[entry_id for entry_id, _ in entries])
        for _, fields in entries:
            if "moved_ms" in fields:  # moved under an in-flight cap
                member = keys.in_flight_member(fields["token"], int(fields["moved_ms"]), fields["job_id"])
                pipe.zrem(keys.IN_FLIGHT, member)
        await pipe.execute()
    return [fields for _, fields in entries]


def _mover_settings(redis_url: str, cache_redis_url: str, mongo_url: str, db: str, **kw: Any) -> Settings:
    """A roomy budget whose burst does not cap a round either: the work streams' room is the limit."""
    return stack_settings(redis_url, cache_redis_url, mongo_url, db, flickr_budget_burst=10_000, **kw)


async def _submit(stack: Stack, user_id: str, n: int, **kw: Any) -> str:
    response = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=user_id, method="flickr.test.echo", params={"n": str(n)}, **kw)
    )
    return str(response.job_id)


async def test_flood_on_one_token_does_not_delay_another(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    flood_size = 600
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    flood_token = (await seed_demo_token(settings)).token_id_hash
    await seed_demo_token(settings, SMALL_USER)
    # The mover runs from the start, the worker comes later: the whole flood is queued (and moved
    # as far as the mover will) before the small token's one job arrives.
    async with running_stack(settings, movers=1, workers=0, cache=False) as stack:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(flood_size):
            queue.put_nowait(i)

        async def submitter() -> None:
            while not queue.empty():
                await _submit(stack, DEMO_USER, queue.get_nowait())

        await asyncio.gather(*(submitter() for _ in range(16)))
        small_id = await _submit(stack, SMALL_USER, 0)
        await asyncio.sleep(1.0)  # the mover's rounds go on: it must not bury the flood in the work stream
        assert await redis.xlen(keys.work_stream("rest")) <= stack.settings.mover_work_backlog + 1
        worker = WorkerApp(stack.settings, consumer="late-worker")
        await worker.start()
        try:
            for _ in range(600):
                small = await stack.store.get(small_id)
                if small is not None and small["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the small token's job never completed")
            finished_before = await stack.mongo.jobs.count_documents(
                {
                    "token_id_hash": flood_token,
                    "status": "completed",
                    "finished_at": {"$lte": small["finished_at"]},
                }
            )
        finally:
            await worker.stop(2.0)
    # It waited for what was already in the work stream (at most MOVER_WORK_BACKLOG) and the worker's
    # slots, not for the flood: a mover that filled the work stream put ~400 of 600 ahead of it.
    assert finished_before < flood_size // 4, finished_before


async def test_client_weights_give_a_weighted_share(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _mover_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        mover_client_weights="heavy=3",
        mover_work_backlog=40,
        mover_token_in_flight=0,  # the heavy client's one token takes 30 a round
    )
    await _fill(redis, [_entry(i, "h1", "heavy") for i in range(500)])
    await _fill(redis, [_entry(i, t, "light") for t in ("l1", "l2") for i in range(500)])
    mover = Mover(settings, redis, "m")
    await mover.run_round()  # creates the consumer groups
    await _take_work(redis)
    per_client: Counter[str] = Counter()
    for _ in range(10):
        assert await mover.run_round() > 0
        per_client.update(fields["client_id"] for fields in await _take_work(redis))
    assert sum(per_client.values()) == 400  # each round fills the work stream's room of 40
    assert per_client["heavy"] == 300
    assert per_client["light"] == 100


async def test_a_round_reads_every_planned_token_in_one_command(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _mover_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, mover_work_backlog=1000)
    tokens = [f"t{i:02d}" for i in range(30)]
    await _fill(redis, [_entry(0, t) for t in tokens])
    mover = Mover(settings, redis, "m")
    await mover.run_round()  # creates the consumer groups
    await _fill(redis, [_entry(i, t) for t in tokens for i in (1, 2)])
    await redis.config_resetstat()
    for _ in range(4):
        await mover.run_round()
    stats = await redis.info("commandstats")
    reads = int(stats["cmdstat_xreadgroup"]["calls"])
    # Thirty tokens' streams (three priorities each) planned together: one XREADGROUP per round that
    # reads, not one per token.
    assert reads <= 4, reads
    assert len(await _take_work(redis)) == 90  # the first round's 30 and the 60 queued after


async def test_a_flood_holds_at_most_its_in_flight_cap_of_the_work_streams(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _mover_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, mover_work_backlog=100, mover_token_in_flight=8
    )
    await _fill(redis, [_entry(i, "flood") for i in range(200)])
    mover = Mover(settings, redis, "m")
    await mover.run_round()  # creates the consumer groups
    stream = keys.work_stream("rest")
    for _ in range(3):
        await mover.run_round()
    # Room for 100 in the work streams, but the flood's 8 are there and no worker finished one.
    assert await redis.xlen(stream) == 8
    await _fill(redis, [_entry(0, "small")])
    for _ in range(2):  # the first round creates the new token's consumer group
        await mover.run_round()
    assert await redis.xlen(stream) == 9  # another token's job goes at once
    finished = await _take_work(redis)  # workers finish all nine
    assert Counter(f["token"] for f in finished) == {"flood": 8, "small": 1}
    await mover.run_round()
    assert await redis.xlen(stream) == 8
    # A removal that never came (a worker died after acknowledging) stops counting after the
    # workers' visibility timeout: the cap tightens for a while, never for good.
    await redis.xdel(stream, *[entry_id for entry_id, _ in await redis.xrange(stream)])
    stale = int((time.time() - settings.worker_visibility_timeout_s - 1) * 1000)
    members = await redis.zrangebylex(keys.IN_FLIGHT, *keys.in_flight_range("flood"))
    assert len(members) == 8
    aged = [m.replace(m.split("|")[1], f"{stale:013d}") for m in members]
    await redis.zrem(keys.IN_FLIGHT, *members)
    await redis.zadd(keys.IN_FLIGHT, dict.fromkeys(aged, 0))
    await mover.run_round()
    assert await redis.xlen(stream) == 8
    # The trim drops them; the fresh members of the eight moved just now stay.
    horizon = int(time.time() * 1000) - int(settings.worker_visibility_timeout_s * 1000)
    assert await upkeep.trim_in_flight(redis, horizon) == 8
    assert await redis.zlexcount(keys.IN_FLIGHT, *keys.in_flight_range("flood")) == 8


async def test_high_priority_goes_first_but_low_is_not_starved(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _mover_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, mover_work_backlog=14, mover_token_in_flight=0
    )
    await _fill(redis, [_entry(i, "t", "c", p) for p in ("low", "normal", "high") for i in range(40)])
    mover = Mover(settings, redis, "m")
    await mover.run_round()
    await _take_work(redis)
    rounds = []
    for _ in range(5):
        await mover.run_round()
        rounds.append([fields["priority"] for fields in await _take_work(redis)])
    for moved in rounds:
        # 14 a round, shared 4:2:1 and appended high first.
        assert moved == ["high"] * 8 + ["normal"] * 4 + ["low"] * 2
    for _ in range(20):
        await mover.run_round()
        rounds.append([fields["priority"] for fields in await _take_work(redis)])
    order = [p for moved in rounds for p in moved]
    assert len(order) == 120
    high_done = max(i for i, p in enumerate(order) if p == "high")
    assert high_done < max(i for i, p in enumerate(order) if p == "normal")
    assert order[: high_done + 1].count("low") >= 8  # low moved all along, though high was queued
    assert await redis.smembers(keys.ACTIVE_TOKENS) == set()  # every stream drained: the token left


async def test_a_submitted_jobs_priority_picks_its_stream(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    token = (await seed_demo_token(settings)).token_id_hash
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        await _submit(stack, DEMO_USER, 1, priority=jobs_pb2.PRIORITY_HIGH)
        await _submit(stack, DEMO_USER, 2, priority=jobs_pb2.PRIORITY_LOW)
        await _submit(stack, DEMO_USER, 3)
        assert stack.keys is not None
        admin = stack.keys.admin_key_id
    for priority, n in (("high", "1"), ("low", "2"), ("normal", "3")):
        [(_, fields)] = await redis.xrange(keys.token_stream(token, priority))
        assert json.loads(fields["params"]) == {"n": n}
        assert fields["client_id"] == admin
    assert await redis.hget(keys.TOKEN_CLIENTS, token) == admin


async def test_a_retried_job_returns_to_its_priority_stream(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _mover_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    retry = _entry(1, "t", "c", "low").next_attempt(rev=2)
    await redis.zadd(keys.DELAYED, {json.dumps(retry.to_fields(), sort_keys=True): int(time.time() * 1000)})
    await redis.zadd(keys.DELAYED, {"not json": 0})
    mover = Mover(settings, redis, "m")
    assert await mover.pump_delayed() == 2
    [(_, fields)] = await redis.xrange(keys.token_stream("t", "low"))
    assert JobEntry.from_fields(fields) == retry
    assert await redis.xlen(keys.token_stream("t")) == 0
    assert await redis.smembers(keys.ACTIVE_TOKENS) == {"t"}
    assert await redis.hget(keys.TOKEN_CLIENTS, "t") == "c"
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTERS)
    assert dead["raw"] == "not json"
    assert await redis.zcard(keys.DELAYED) == 0


async def test_a_retried_low_priority_job_completes(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings, cache=False) as stack:
        stack.sandbox.faults.append(
            Fault(id="once", method="flickr.test.echo", kind="http_status", status=503)
        )
        job_id = await _submit(stack, DEMO_USER, 1, priority=jobs_pb2.PRIORITY_LOW)
        for _ in range(200):
            job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
            if job.state == jobs_pb2.JOB_STATE_COMPLETED:
                break
            await asyncio.sleep(0.05)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED
    assert job.attempts == 2
    assert job.priority == jobs_pb2.PRIORITY_LOW


async def test_in_flight_counts_by_lex_range_on_redis(redis: Any) -> None:
    """ZLEXCOUNT over a token's range and the whole-set read agree, tokens that prefix others included."""
    now = int(time.time() * 1000)
    names = {
        keys.in_flight_member(token, now - age, f"j{i}"): 0
        for i, (token, age) in enumerate([("ab", 0), ("ab", 10), ("a", 0), ("abc", 0), ("ab", 90_000)])
    }
    await redis.zadd(keys.IN_FLIGHT, names)
    since = now - 60_000
    assert await redis.zlexcount(keys.IN_FLIGHT, *keys.in_flight_range("ab", since)) == 2
    assert await redis.zlexcount(keys.IN_FLIGHT, *keys.in_flight_range("a", since)) == 1
    assert await redis.zlexcount(keys.IN_FLIGHT, *keys.in_flight_range("ab")) == 3
    whole = await redis.zrangebylex(keys.IN_FLIGHT, "-", "+")
    assert keys.in_flight_counts(whole, since) == {"ab": 2, "a": 1, "abc": 1}
    assert await upkeep.trim_in_flight(redis, since) == 1  # the member moved 90 s ago
    assert await redis.zcard(keys.IN_FLIGHT) == 4


async def test_room_in_the_work_stream_follows_the_workers_group_lag(
    redis: Any, redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    """Workers take entries (delivered, then acknowledged and deleted out of order): the mover keeps
    exactly MOVER_WORK_BACKLOG undelivered, read from the group's lag."""
    settings = _mover_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, mover_work_backlog=10, mover_token_in_flight=0
    )
    stream = keys.work_stream("rest")
    await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    await _fill(redis, [_entry(i, "t") for i in range(100)])
    mover = Mover(settings, redis, "m")
    for _ in range(3):
        await mover.run_round()
    assert await redis.xlen(stream) == 10
    for take, finish in ((4, [3, 0]), (6, [1, 5, 2]), (5, [0, 4])):
        got = await redis.xreadgroup(keys.WORKER_GROUP, "w", {stream: ">"}, count=take)
        ids = [entry_id for entry_id, _ in got[0][1]]
        done = [ids[i] for i in finish]  # not in delivery order
        await redis.xack(stream, keys.WORKER_GROUP, *done)
        await redis.xdel(stream, *done)
        for _ in range(2):
            await mover.run_round()
        info = {g["name"]: g for g in await redis.xinfo_groups(stream)}[keys.WORKER_GROUP]
        undelivered = await redis.xlen(stream) - info["pending"]
        assert undelivered == 10, (take, finish)
