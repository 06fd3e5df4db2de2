"""The whole pipeline in the test's own process: sandbox, cache, gateway, mover and worker apps.

Real servers over real sockets (gRPC on port 0, the sandbox on a free port,
Redis and SecantusDB from the session fixtures); only the process boundary is
missing, which lets tests read spans from an in-memory exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc

from cache.app import CacheApp
from cli import credentials
from common.jobstore import JobStore
from common.mongo import Mongo
from common.settings import Settings
from common.tokens import TokenRecord
from devstack import seed as devstack_seed
from flickrhub.v1 import jobs_pb2_grpc
from gateway.app import GatewayApp
from mover.app import MoverApp
from sandbox import app as sandbox_app
from sandbox import state as sandbox_state
from tests.helpers.tasks import dump_tasks
from worker.app import WorkerApp

DEMO_USER = devstack_seed.DEMO_USER


def stack_settings(
    redis_url: str, cache_redis_url: str, mongo_url: str, db: str, **overrides: Any
) -> Settings:
    """Settings for an in-process or subprocess stack on free ports, with fast timings."""
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "cache_redis_url": cache_redis_url,
        "mongo_url": mongo_url,
        "mongo_db": db,
        "gateway_port": 0,
        "mover_port": 0,
        "worker_port": 0,
        "cache_port": 0,
        "gateway_metrics_port": -1,
        "mover_metrics_port": -1,
        "worker_metrics_port": -1,
        "cache_metrics_port": -1,
        "edge_metrics_port": -1,
        "worker_visibility_timeout_s": 3.0,
        "worker_backoff_base_s": 0.05,
        "worker_backoff_max_s": 0.2,
        "mover_claim_idle_s": 2.0,
        "insert_batch_ms": 1.0,
        "shutdown_grace_s": 5.0,
        # The cheapest cost allowed: every stack hashes its seeded keys (tests of the cost set theirs).
        "api_key_bcrypt_rounds": 10,
        # The sandbox is not Flickr: tests that check the budget set their own.
        "flickr_budget_per_hour": 100_000_000,
        # Test webhook receivers listen on 127.0.0.1, which webhooks may only reach when allow-listed.
        "webhook_allowed_hosts": "127.0.0.1",
    }
    base.update(overrides)
    return Settings.from_env(env={}, **base)


async def seed_demo_token(settings: Settings, user_id: str = DEMO_USER) -> TokenRecord:
    """The sandbox's demo token for `user_id`, with a token id of its own."""
    return await devstack_seed.seed_demo_token(settings, user_id, distinct=True)


@dataclass
class Stack:
    """Handles to a running in-process stack."""

    settings: Settings
    sandbox: sandbox_state.SandboxState
    sandbox_url: str
    gateway: GatewayApp
    movers: list[MoverApp]
    workers: list[WorkerApp]
    channel: grpc.aio.Channel
    mongo: Mongo
    # The seeded API keys; `channel` presents the admin key (bound to every user) on each call
    # that carries no credentials of its own, so tests act as a trusted internal client.
    keys: devstack_seed.DemoKeys | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        """HTTP headers presenting the admin key (REST calls through an edge)."""
        assert self.keys is not None
        return {"Authorization": f"Bearer {self.keys.admin_key}"}

    def unauthenticated_channel(self) -> grpc.aio.Channel:
        """A channel to the gateway with no credentials (the caller closes it)."""
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.gateway.port}")

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceAsyncStub:
        """A JobService stub on the gateway."""
        return jobs_pb2_grpc.JobServiceStub(self.channel)

    @property
    def store(self) -> JobStore:
        """Direct access to job documents."""
        return JobStore.from_settings(self.mongo.jobs, self.gateway.redis, self.settings)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, *, movers: int = 1, workers: int = 1, cache: bool = True
) -> AsyncIterator[Stack]:
    """Start sandbox, cache (optional), gateway, movers and workers; stop them all afterwards."""
    state = sandbox_state.SandboxState.demo()
    runner, sandbox_port = await sandbox_app.start(state)
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    settings = Settings.from_env(env={}, **{**settings.__dict__, "sandbox_url": sandbox_url})
    started: list[Any] = []
    # The demo keys need only MongoDB and Redis: they are hashed (and their epoch leases waited out)
    # while the services start.
    seeding = asyncio.create_task(devstack_seed.seed_api_keys(settings), name="seed_api_keys")
    try:
        if cache:
            cache_app = CacheApp(settings)
            await cache_app.start()
            started.append(cache_app)
            settings = Settings.from_env(
                env={}, **{**settings.__dict__, "cache_addr": f"127.0.0.1:{cache_app.port}"}
            )
        else:
            settings = Settings.from_env(env={}, **{**settings.__dict__, "cache_addr": "127.0.0.1:9"})
        gateway = GatewayApp(settings)
        await gateway.start()
        started.append(gateway)
        mover_apps = [MoverApp(settings, consumer=f"mover-{i}") for i in range(movers)]
        worker_apps = [WorkerApp(settings, consumer=f"worker-{i}") for i in range(workers)]
        apps: list[MoverApp | WorkerApp] = [*mover_apps, *worker_apps]
        for app in apps:
            await app.start()
            started.append(app)
        demo_keys = await seeding
        channel = credentials.authenticated_channel(f"127.0.0.1:{gateway.port}", demo_keys.admin_key)
        mongo = Mongo.from_settings(settings)
        try:
            yield Stack(
                settings, state, sandbox_url, gateway, mover_apps, worker_apps, channel, mongo, demo_keys
            )
        finally:
            await _stopped("the test channel", channel.close())
            await _stopped("the test MongoDB client", mongo.close())
    finally:
        if not seeding.done():  # a service failed to start
            seeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await seeding
        for app in reversed(started):
            await _stopped(type(app).__name__, app.stop(2.0))
        await _stopped("the sandbox", runner.cleanup())


async def _stopped(what: str, stopping: Awaitable[Any], timeout: float = 30.0) -> None:
    """Await one step of stopping the stack; a step that hangs is reported (every task's await
    chain, to find why) and abandoned, so one hung close does not hang the whole suite."""
    try:
        await asyncio.wait_for(stopping, timeout)
    except TimeoutError:
        # Shown in the suite's warnings summary even when the test passes; the dump is in its stderr.
        warnings.warn(f"running_stack: stopping {what} hung over {timeout:.0f} s", stacklevel=1)
        dump_tasks(f"running_stack: stopping {what} took over {timeout:.0f} s; abandoned")
    except Exception as exc:  # a stop that fails leaves nothing for the next test to trip on
        print(f"running_stack: stopping {what} failed: {exc!r}", file=sys.stderr)


async def sandbox_calls(stack: Stack, method: str | None = None) -> list[dict[str, Any]]:
    """The sandbox's call log."""
    calls = [c.__dict__ for c in stack.sandbox.calls]
    return [c for c in calls if method is None or c.get("method") == method]
