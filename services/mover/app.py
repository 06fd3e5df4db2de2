"""The mover process: health over gRPC, the moving loop in the background."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from common import redisio
from common.mongo import Mongo
from common.recovery import Sweeper, SweepReport
from common.service import Check, GrpcServer, bootstrap, run_service, start_metrics
from common.settings import Settings
from mover import metrics
from mover.mover import Mover


class MoverApp:
    """One mover replica."""

    name = "mover"

    def __init__(self, settings: Settings, consumer: str | None = None) -> None:
        self.settings = settings
        self.redis = redisio.client(settings.redis_url)
        self.consumer = consumer or f"mover-{socket.gethostname()}-{os.getpid()}"
        self.mover = Mover(settings, self.redis, self.consumer)
        # Recovery from MongoDB runs beside the moving loop (one replica at a time sweeps).
        self.mongo = Mongo.from_settings(settings)
        self.recovery = Sweeper(settings, self.redis, self.mongo.jobs, self.consumer)
        self.grpc = GrpcServer([], settings.bind_host, settings.mover_port)
        self.port = self.grpc.port
        self.metrics_port = -1
        self._task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve health and start moving."""
        checks: dict[str, Check] = {"redis": self.redis.ping}
        await self.grpc.start(checks, self.settings.readiness_interval_s)
        self.metrics_port = start_metrics(self.settings.mover_metrics_port)
        self._task = asyncio.create_task(self.mover.run(), name="mover")
        self._recovery_task = asyncio.create_task(self.recovery.run(_count_sweep), name="recovery")

    async def stop(self, grace: float) -> None:
        """Finish the round in progress (it is short), then close."""
        await self.grpc.health.enter_graceful_shutdown()
        self.mover.stop()
        self.recovery.stop()
        try:
            if self._task is not None:
                await asyncio.wait_for(self._task, timeout=grace)
            if self._recovery_task is not None:
                # A sweep still running after the grace is cancelled: the next sweep starts over.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recovery_task, timeout=grace)
        finally:
            await self.grpc.stop(1.0)
            await self.mongo.close()
            await self.redis.aclose()


def _count_sweep(report: SweepReport) -> None:
    metrics.RECOVERY_SWEEPS.labels(kind="full" if report.full else "periodic").inc()
    for status, count in report.by_status().items():
        metrics.RECOVERED.labels(status=status).inc(count)
    metrics.ORPHAN_BLOBS.inc(report.orphan_blobs)


async def run(settings: Settings) -> None:
    """Run a mover until SIGTERM."""
    bootstrap("mover", settings)
    await run_service(MoverApp(settings), settings)
