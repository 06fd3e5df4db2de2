"""How every FlickrHub service starts, reports health and stops.

`python -m <service>` → `run_loop(app.run(settings))` (uvloop unless EVENT_LOOP=asyncio) → `run_service(app)`:
the gRPC server gets the standard health service, reflection, the error and
tracing interceptors and a Prometheus port; SIGTERM flips health to NOT_SERVING,
stops intake, drains within the grace period, then closes clients.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from prometheus_client import start_http_server

from common.grpc_errors import UNTRACED, ErrorInterceptor
from common.logs import setup_logging
from common.settings import GRPC_MAX_MESSAGE_BYTES, Settings
from common.telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

# Generous keepalive so idle channels between services survive NATs and LBs; round_robin over every
# address the name resolves to (point clients at a headless Service: dns:///gateway:50051).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.lb_policy_name", "round_robin"),
]
# Servers close connections after a few minutes (with a grace period) so clients re-resolve and
# new replicas get their share of long-lived channels.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),  # EDGE_MAX_BODY_BYTES stays within it
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


class Service(Protocol):
    """What run_service needs from a service's app object."""

    name: str

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


# Health service names: "" answers liveness (SERVING while the process runs); READINESS (and
# each RPC service) answers readiness: NOT_SERVING while a dependency the service needs is down.
READINESS = "flickrhub.readiness"
Check = Callable[[], Awaitable[object]]


class GrpcServer:
    """A grpc.aio server with health, reflection and FlickrHub's interceptors."""

    def __init__(
        self,
        service_names: Iterable[str],
        host: str,
        port: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        untraced_methods: Iterable[str] = (),
    ) -> None:
        # Health and reflection are not traced: probes would drown the traces.
        # `untraced_methods` (full names, e.g. the cache's batch calls) trace their work themselves.
        untraced = (*UNTRACED, *("/" + name.lstrip("/") for name in untraced_methods))
        # `interceptors` (e.g. the gateway's authentication) run inside ErrorInterceptor (which also
        # traces each RPC), so their FlickrHubErrors become rich status like any servicer's.
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor(untraced), *interceptors], options=SERVER_OPTIONS
        )
        self.health = health.aio.HealthServicer()
        self.service_names = [*service_names, health.SERVICE_NAME]
        self.ready_names = [*service_names, READINESS]
        self._watcher: asyncio.Task[None] | None = None
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*self.service_names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC port {host}:{port}")

    async def start(self, checks: Mapping[str, Check] | None = None, interval_s: float = 5.0) -> None:
        """Start serving; readiness then follows `checks` (name → coroutine that raises when down)."""
        await self.server.start()
        for name in ("", *self.service_names, READINESS):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if checks:
            self._watcher = asyncio.create_task(self._watch(checks, interval_s), name="readiness")

    async def _watch(self, checks: Mapping[str, Check], interval_s: float) -> None:
        ready = True
        while True:
            failed = []
            for name, check in checks.items():
                try:
                    await asyncio.wait_for(check(), timeout=max(1.0, interval_s / 2))
                except Exception as exc:  # any failure of a probe means "not ready"
                    failed.append(f"{name} ({type(exc).__name__})")
            if bool(failed) == ready:
                ready = not failed
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in self.ready_names:
                    await self.health.set(name, status)
                log.warning("readiness: %s", "ready" if ready else "not ready: " + ", ".join(failed))
            await asyncio.sleep(interval_s)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (load balancers stop routing), then stop with a grace period."""
        if self._watcher is not None:
            self._watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def start_metrics(port: int) -> int:
    """Serve Prometheus metrics on `port` (0 = any free port, -1 = off); returns the bound port."""
    if port < 0:
        return -1
    server, _thread = start_http_server(port, addr="127.0.0.1" if port == 0 else "0.0.0.0")
    return int(server.server_port)


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A client channel to another FlickrHub service, traced."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=aio_client_interceptors())  # type: ignore[no-untyped-call]


def run_loop(main: Coroutine[Any, Any, None], settings: Settings) -> None:
    """Run a service's main coroutine to the end on the event loop its settings name."""
    if settings.event_loop == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)


# Young collections every this many allocations (Python's default: 700); a job allocates thousands.
GC_GEN0 = 10_000


def settle_gc() -> None:
    """Once started: keep what startup built (modules, stubs, clients: most of the heap) out of every
    later collection, and collect the young generation less often. Measured here: the collector took
    2-4% of a service's CPU under load, most of it walking objects that live as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])


def bootstrap(service: str, settings: Settings) -> None:
    """Logging and tracing for a service process."""
    setup_logging(service, settings.log_level)
    setup_tracing(service, settings.otel_traces_exporter)


async def run_service(app: Service, settings: Settings) -> None:
    """Start `app`, wait for SIGTERM or SIGINT, then drain and stop it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    settle_gc()
    log.info("%s started", app.name)
    await stop.wait()
    log.info("%s draining (grace %.1fs)", app.name, settings.shutdown_grace_s)
    await app.stop(settings.shutdown_grace_s)
    shutdown_tracing()
    log.info("%s stopped", app.name)
