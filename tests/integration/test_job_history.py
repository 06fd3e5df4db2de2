"""ListJobs: filters, newest-first keyset pages that survive new arrivals, and each client sees its own."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2

from common import jobs
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc, keys_pb2, keys_pb2_grpc
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings

ECHO = "flickr.test.echo"
SEARCH = "flickr.photos.search"


@dataclass
class Env:
    stack: Stack
    jobs: jobs_pb2_grpc.JobServiceAsyncStub  # no credentials of its own: calls pass one
    key_a: keys_pb2.ApiKeySecret
    key_b: keys_pb2.ApiKeySecret


def _as(key: keys_pb2.ApiKeySecret | str) -> list[tuple[str, str]]:
    secret = key if isinstance(key, str) else key.api_key
    return [("authorization", f"Bearer {secret}")]


@pytest_asyncio.fixture
async def env(
    request: pytest.FixtureRequest,
    redis_url: str,
    cache_redis_url: str,
    mongo_url: str,
    mongo_db_name: str,
    redis: Any,
) -> AsyncIterator[Env]:
    """A stack without movers or workers; `indirect` parametrization sets LIST_JOBS_MAX_EXAMINED."""
    bound = getattr(request, "param", None)
    overrides = {"list_jobs_max_examined": bound} if bound is not None else {}
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, **overrides)
    await seed_demo_token(settings)
    # No mover or worker: jobs stay queued, which is all a history needs.
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        admin = keys_pb2_grpc.ApiKeyServiceStub(stack.channel)
        a = await admin.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="client a", user_ids=[DEMO_USER]))
        b = await admin.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="client b", user_ids=[DEMO_USER]))
        raw = stack.unauthenticated_channel()
        try:
            yield Env(stack, jobs_pb2_grpc.JobServiceStub(raw), a, b)
        finally:
            await raw.close()


async def _all_pages(
    env: Env, key: Any, page_size: int, shapes: list[tuple[int, bool]] | None = None, **filters: Any
) -> list[str]:
    """Every page's job ids in order; `shapes` collects (jobs on the page, has a next token)."""
    ids: list[str] = []
    token = ""
    while True:
        page = await env.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_size=page_size, page_token=token, **filters),
            metadata=_as(key),
        )
        ids += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if shapes is not None:
            shapes.append((len(page.jobs), bool(token)))
        if not token:
            return ids


# Rows one ListJobs call may read: the default, or so few that pages stop short (3 per round trip).
BOUNDS = pytest.mark.parametrize(
    ("env", "max_examined"), [(None, None), (7, 7)], indirect=["env"], ids=["default-bound", "bound-7"]
)


async def _submit(env: Env, key: keys_pb2.ApiKeySecret, n: int) -> list[str]:
    out = []
    for i in range(n):
        resp = await env.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method=ECHO, params={"i": str(i)}), metadata=_as(key)
        )
        out.append(resp.job_id)
    return out


@BOUNDS
async def test_pages_have_no_duplicates_and_no_gaps_while_new_jobs_arrive(
    env: Env, max_examined: int | None
) -> None:
    await _submit(env, env.key_a, 25)
    before = [
        d["job_id"]
        async for d in env.stack.mongo.jobs.find({"user_id": DEMO_USER}).sort(
            [("created_at", -1), ("job_id", -1)]
        )
    ]
    first = await env.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_size=10), metadata=_as(env.key_a)
    )
    arrived = await _submit(env, env.key_a, 7)  # newer than everything on page 1
    seen = [j.job_id for j in first.jobs]
    token = first.next_page_token
    while token:
        page = await env.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_size=10, page_token=token),
            metadata=_as(env.key_a),
        )
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
    assert len(seen) == len(set(seen))  # no duplicates
    assert seen == before  # no gaps, newest first, none of the late arrivals in later pages
    assert not set(arrived) & set(seen)
    fresh = await _all_pages(env, env.key_a, 10)
    assert fresh[:7] == list(reversed(arrived)) and fresh[7:] == before


async def test_a_client_sees_only_its_own_jobs_and_an_admin_sees_all(env: Env) -> None:
    mine = set(await _submit(env, env.key_a, 3))
    theirs = set(await _submit(env, env.key_b, 2))
    assert set(await _all_pages(env, env.key_a, 100)) == mine
    assert set(await _all_pages(env, env.key_b, 100)) == theirs
    # Naming oneself is allowed; naming another client is refused, not silently emptied.
    assert set(await _all_pages(env, env.key_a, 100, client_id=env.key_a.key.key_id)) == mine
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(user_id=DEMO_USER, client_id=env.key_a.key.key_id),
            metadata=_as(env.key_b),
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert env.stack.keys is not None
    admin = env.stack.keys.admin_key
    assert set(await _all_pages(env, admin, 100)) == mine | theirs
    assert set(await _all_pages(env, admin, 100, client_id=env.key_b.key.key_id)) == theirs


@pytest.mark.parametrize("env", [10], indirect=True)
async def test_a_rare_method_is_found_through_short_pages_that_go_on(env: Env) -> None:
    """`method` is filtered while walking: a call reads at most LIST_JOBS_MAX_EXAMINED rows, then goes on
    from where it stopped."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    client = env.key_a.key.key_id
    docs = [
        {
            "job_id": uuid.uuid4().hex,
            "client_id": client,
            "user_id": DEMO_USER,
            "method": SEARCH if i == 0 else ECHO,  # the oldest job is the only search
            "status": jobs.QUEUED,
            "rev": 0,
            "created_at": base + timedelta(seconds=i),
            "updated_at": base,
        }
        for i in range(31)
    ]
    await env.stack.mongo.jobs.insert_many(docs)
    shapes: list[tuple[int, bool]] = []
    assert await _all_pages(env, env.key_a, 5, shapes, method=SEARCH) == [docs[0]["job_id"]]
    # Rows 1-10, 11-20, 21-30 hold no search: three empty pages that go on, then the match.
    assert shapes == [(0, True), (0, True), (0, True), (1, False)]
    # Without the method filter the same bound still fills pages (every row read is a match).
    shapes.clear()
    assert len(await _all_pages(env, env.key_a, 5, shapes)) == 31
    assert shapes == [(5, True)] * 6 + [(1, False)]


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


@BOUNDS
async def test_every_filter_combination_pages_exactly_the_matching_jobs_newest_first(
    env: Env, max_examined: int | None
) -> None:
    rng = random.Random(6)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    same_ms = base + timedelta(days=3)  # a run of jobs created in one millisecond: the cursor's ties
    clients = [env.key_a.key.key_id, env.key_b.key.key_id]
    states = [jobs.QUEUED, jobs.COMPLETED, jobs.FAILED]
    docs: list[dict[str, Any]] = []
    for i in range(140):
        created = same_ms if i < 12 else base + timedelta(minutes=rng.randrange(0, 10 * 24 * 60))
        docs.append(
            {
                "job_id": uuid.uuid4().hex,
                "client_id": rng.choice(clients),
                "user_id": DEMO_USER if i % 10 else "someone-else",
                "token_id_hash": "t",
                "method": rng.choice([ECHO, SEARCH]),
                "params": {},
                "target": "rest",
                "priority": "normal",
                "status": rng.choice(states),
                "rev": 0,
                "attempts": 0,
                "max_attempts": 3,
                "created_at": created,
                "updated_at": created,
            }
        )
    await env.stack.mongo.jobs.insert_many([dict(d) for d in docs])
    assert env.stack.keys is not None
    windows: list[tuple[datetime | None, datetime | None]] = [
        (None, None),
        (base + timedelta(days=2), None),
        (None, same_ms),  # exclusive: the tied run is left out
        (same_ms, base + timedelta(days=8)),  # inclusive start: the tied run is in
    ]
    viewers = [(env.key_a, clients[0]), (env.stack.keys.admin_key, None)]
    short_pages_went_on = False
    for (key, client), state, method, (after, before) in itertools.product(
        viewers, [None, jobs.COMPLETED], [None, SEARCH], windows
    ):
        expected = [
            d
            for d in docs
            if d["user_id"] == DEMO_USER
            and (client is None or d["client_id"] == client)
            and (state is None or d["status"] == state)
            and (method is None or d["method"] == method)
            and (after is None or d["created_at"] >= after)
            and (before is None or d["created_at"] < before)
        ]
        expected.sort(key=lambda d: (d["created_at"], d["job_id"]), reverse=True)
        filters: dict[str, Any] = {}
        if state:
            filters["state"] = jobs.state_to_proto(state)
        if method:
            filters["method"] = method
        if after:
            filters["created_after"] = _ts(after)
        if before:
            filters["created_before"] = _ts(before)
        shapes: list[tuple[int, bool]] = []
        got = await _all_pages(env, key, 5, shapes, **filters)
        assert got == [d["job_id"] for d in expected], (client, state, method, after, before)
        assert expected or (state and method)  # the data leaves no combination trivially empty
        short_pages_went_on |= any(n < 5 and more for n, more in shapes)
    # With a bound of 7 rows a call, a method filter stops pages short, and they go on.
    assert short_pages_went_on == (max_examined is not None)


async def test_bad_filters_are_invalid_argument(env: Env) -> None:
    for request in (
        jobs_pb2.ListJobsRequest(user_id=DEMO_USER, method="not a method"),
        jobs_pb2.ListJobsRequest(
            user_id=DEMO_USER,
            created_after=_ts(datetime(2026, 2, 1, tzinfo=UTC)),
            created_before=_ts(datetime(2026, 1, 1, tzinfo=UTC)),
        ),
        jobs_pb2.ListJobsRequest(user_id=DEMO_USER, page_token="garbage!"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.jobs.ListJobs(request, metadata=_as(env.key_a))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
