"""The whole suite as real processes: two Redis roles, SecantusDB, the sandbox, the services, the edge.

`make run` starts it on the documented default ports; the e2e tests start it on
free ports in a temporary folder, and kill or restart pieces of it.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import Settings
from devstack import seed
from devstack.procs import Managed, free_port, python_module, start_all, stop_all, wait_for_port
from devstack.stores import mongo_url, redis_server, secantus


@dataclass
class Ports:
    """Every port the stack listens on."""

    redis: int
    cache_redis: int
    mongo: int
    sandbox: int
    gateway: int
    cache: int
    edge: int
    metrics: dict[str, int] = field(default_factory=dict)

    @classmethod
    def defaults(cls) -> Ports:
        """The documented ports of `make run` (Settings' defaults)."""
        s = Settings()
        return cls(
            redis=_port_of(s.redis_url),
            cache_redis=_port_of(s.cache_redis_url),
            mongo=_port_of(s.mongo_url),
            sandbox=_port_of(s.sandbox_url),
            gateway=s.gateway_port,
            cache=s.cache_port,
            edge=s.edge_port,
            metrics={
                "gateway": s.gateway_metrics_port,
                "mover": s.mover_metrics_port,
                "worker": s.worker_metrics_port,
                "cache": s.cache_metrics_port,
                "edge": s.edge_metrics_port,
            },
        )

    @classmethod
    def free(cls) -> Ports:
        """Free ports for a test stack (metrics off)."""
        return cls(free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port())


def _port_of(url: str) -> int:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    return int(host_port.rsplit(":", 1)[1])


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ProcessStack:
    """Starts, supervises and stops the suite's processes."""

    def __init__(
        self,
        data_dir: Path,
        ports: Ports,
        *,
        workers: int = 1,
        movers: int = 1,
        env: dict[str, str] | None = None,
        db_name: str = "flickrhub",
    ) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.logs = data_dir / "logs"
        self.db_name = db_name
        self.extra_env = dict(env or {})
        self.workers: list[Managed] = []
        self.movers: list[Managed] = []
        self.n_workers = workers
        self.n_movers = movers
        self.procs: dict[str, Managed] = {}
        # The demo API keys seeded by start() (a client bound to the demo user, an admin).
        self.keys: seed.DemoKeys | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment every service process gets."""
        p = self.ports
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{p.redis}/0",
            "CACHE_REDIS_URL": f"redis://127.0.0.1:{p.cache_redis}/0",
            "MONGO_URL": mongo_url(p.mongo),
            "MONGO_DB": self.db_name,
            "SANDBOX_URL": f"http://127.0.0.1:{p.sandbox}",
            "GATEWAY_PORT": str(p.gateway),
            "GATEWAY_ADDR": f"127.0.0.1:{p.gateway}",
            "CACHE_PORT": str(p.cache),
            "CACHE_ADDR": f"127.0.0.1:{p.cache}",
            "EDGE_PORT": str(p.edge),
            "MOVER_PORT": "0",
            "WORKER_PORT": "0",
            # The local sandbox is not Flickr: a roomy budget so the load driver measures FlickrHub.
            "FLICKR_BUDGET_PER_HOUR": "36000000",
            # Demo webhook receivers run on this machine: the local stack lets webhooks reach loopback.
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,::1,localhost",
        }
        for service in ("gateway", "mover", "worker", "cache", "edge"):
            env[f"{service.upper()}_METRICS_PORT"] = str(p.metrics.get(service, -1))
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        """The services' settings, as they read them."""
        return Settings.from_env(self.env)

    def _service(self, name: str, module: str, port: int, env: dict[str, str] | None = None) -> Managed:
        return Managed(
            name, python_module(module), port, self.logs / f"{name}.log", env={**self.env, **(env or {})}
        )

    def start(self) -> ProcessStack:
        """Start the stores side by side, then every service side by side; seed the demo user and keys.

        The services only need the stores at start (the edge, the gateway and the workers dial each
        other lazily), so each tier starts at once and waits for its ports together.
        """
        p = self.ports
        self.procs["redis"] = redis_server("queue", self.data_dir / "redis-queue", p.redis)
        self.procs["cache-redis"] = redis_server("cache", self.data_dir / "redis-cache", p.cache_redis)
        self.procs["mongo"] = secantus(self.data_dir, p.mongo)
        start_all([self.procs[name] for name in ("redis", "cache-redis", "mongo")], timeout=60)
        self.procs["sandbox"] = Managed(
            "sandbox",
            python_module("sandbox", "--port", str(p.sandbox), "--seed-demo"),
            p.sandbox,
            self.logs / "sandbox.log",
        )
        self.procs["cache"] = self._service("cache", "cache", p.cache)
        self.procs["gateway"] = self._service("gateway", "gateway", p.gateway)
        self.procs["edge"] = self._service("edge", "edge", p.edge)
        listening = [self.procs[name] for name in ("sandbox", "cache", "gateway", "edge")]
        for proc in listening:
            proc.start(wait=False)
        for _ in range(self.n_movers):
            self.add_mover()
        for _ in range(self.n_workers):
            self.add_worker()
        # A thread of its own: start() may be called from code that already runs an event loop.
        # Seeding needs only MongoDB, so it runs while the services start.
        with ThreadPoolExecutor(max_workers=1) as pool:
            token = pool.submit(asyncio.run, seed.seed_demo_token(self.settings))
            keys = pool.submit(asyncio.run, seed.seed_api_keys(self.settings))
            for proc in listening:
                wait_for_port("127.0.0.1", proc.port, 20.0, proc.proc)
            token.result()
            self.keys = keys.result()
        return self

    def add_worker(self, env: dict[str, str] | None = None) -> Managed:
        """Start one more worker process (its own metrics port when metrics are on); `env` adds to its env."""
        return self._add_replica("worker", self.workers, env)

    def add_mover(self) -> Managed:
        """Start one more mover process."""
        return self._add_replica("mover", self.movers)

    def _add_replica(
        self, service: str, replicas: list[Managed], extra: dict[str, str] | None = None
    ) -> Managed:
        index = len(replicas)
        metrics = self.ports.metrics.get(service, -1)
        env = {f"{service.upper()}_METRICS_PORT": str(metrics + index if metrics > 0 else -1)}
        replica = self._service(f"{service}-{index}", service, 0, {**env, **(extra or {})})
        replica.start(wait=False)
        replicas.append(replica)
        self.procs[replica.name] = replica
        return replica

    def stop(self) -> None:
        """Stop the services first (they drain), then the stores; each tier side by side.

        The edge goes first (its in-flight requests still reach the gateway), then the gateway,
        movers and workers, then what they call (the cache service, the sandbox), then the stores.
        """
        tiers = [
            ["edge"],
            [*[w.name for w in self.workers], *[m.name for m in self.movers], "gateway"],
            ["cache", "sandbox"],
            ["mongo", "cache-redis", "redis"],
        ]
        for tier in tiers:
            stop_all([self.procs[name] for name in tier if name in self.procs])

    def restart_redis(self) -> None:
        """Stop the queue Redis (SIGTERM: AOF flushed) and start it again on the same port and data."""
        redis = self.procs["redis"]
        redis.stop()
        redis.start()
