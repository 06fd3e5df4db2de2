"""The mover process: health over gRPC, the moving loop in the background."""

from __future__ import annotations

import asyncio
import os
import socket

from common import redisio
from common.service import Check, GrpcServer, bootstrap, run_service, start_metrics
from common.settings import Settings
from mover.mover import Mover


class MoverApp:
    """One mover replica."""

    name = "mover"

    def __init__(self, settings: Settings, consumer: str | None = None) -> None:
        self.settings = settings
        self.redis = redisio.client(settings.redis_url)
        self.consumer = consumer or f"mover-{socket.gethostname()}-{os.getpid()}"
        self.mover = Mover(settings, self.redis, self.consumer)
        self.grpc = GrpcServer([], settings.bind_host, settings.mover_port)
        self.port = self.grpc.port
        self.metrics_port = -1
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve health and start moving."""
        checks: dict[str, Check] = {"redis": self.redis.ping}
        await self.grpc.start(checks, self.settings.readiness_interval_s)
        self.metrics_port = start_metrics(self.settings.mover_metrics_port)
        self._task = asyncio.create_task(self.mover.run(), name="mover")

    async def stop(self, grace: float) -> None:
        """Finish the round in progress (it is short), then close."""
        await self.grpc.health.enter_graceful_shutdown()
        self.mover.stop()
        try:
            if self._task is not None:
                await asyncio.wait_for(self._task, timeout=grace)
        finally:
            await self.grpc.stop(1.0)
            await self.redis.aclose()


async def run(settings: Settings) -> None:
    """Run a mover until SIGTERM."""
    bootstrap("mover", settings)
    await run_service(MoverApp(settings), settings)
