"""Real servers for the suite: one queue Redis, one cache Redis and one SecantusDB per session.

Each test gets clean state: the Redis fixtures flush before the test, and each
test gets its own MongoDB database, dropped afterwards.
"""

from __future__ import annotations

import os

# The e2e tests start and kill processes while gRPC calls are in flight; gRPC's fork handlers would
# cancel those calls in this process. Nothing here forks to run gRPC in a child, so turn them off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import asyncio
import inspect
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from common import redisio
from devstack.procs import Managed
from devstack.stores import mongo_url as make_mongo_url
from devstack.stores import redis_server, secantus
from tests.helpers.tasks import dump_tasks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every coroutine test the watchdog below, set up first so it is torn down last.

    pytest-timeout counts a test's fixture teardown too: a stack that hangs while stopping is
    then shown the same way as a hung test body.
    """
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "_dump_tasks_before_timeout")


@pytest_asyncio.fixture
async def _dump_tasks_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Shortly before pytest-timeout kills a hung test, print every asyncio task's stack.

    pytest-timeout shows threads only; a hung await lives in a task, and this says which.
    """
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout"))
    loop = asyncio.get_running_loop()
    handle = loop.call_later(max(5.0, limit - 20.0), _dump_tasks, request.node.nodeid)
    yield
    handle.cancel()


def _dump_tasks(nodeid: str) -> None:
    dump_tasks(f"{nodeid}: still running")


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flickrhub-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def queue_redis_server(tmp_root: Path) -> Iterator[Managed]:
    server = redis_server("queue", tmp_root / "redis-queue").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cache_redis_server(tmp_root: Path) -> Iterator[Managed]:
    server = redis_server("cache", tmp_root / "redis-cache", maxmemory="16mb").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_root: Path) -> Iterator[str]:
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"]
        return
    server = secantus(tmp_root / "mongo", ttl_sweep_s=1).start(timeout=60)
    yield make_mongo_url(server.port)
    server.stop()


@pytest.fixture
def redis_url(queue_redis_server: Managed) -> str:
    return f"redis://127.0.0.1:{queue_redis_server.port}/0"


@pytest.fixture
def cache_redis_url(cache_redis_server: Managed) -> str:
    return f"redis://127.0.0.1:{cache_redis_server.port}/0"


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[redisio.Redis]:
    client = redisio.client(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def cache_redis(cache_redis_url: str) -> AsyncIterator[redisio.Redis]:
    client = redisio.client(cache_redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def mongo_url(mongo_server: str) -> str:
    return mongo_server


@pytest.fixture
def mongo_db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def mongo_db(mongo_url: str, mongo_db_name: str) -> AsyncIterator[AsyncDatabase[dict[str, object]]]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        yield client[mongo_db_name]
    finally:
        await client.drop_database(mongo_db_name)
        await client.close()
