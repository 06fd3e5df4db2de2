"""The worker process: executes jobs from the work streams and delivers webhooks."""

from __future__ import annotations

import os
import socket

from common import keys, redisio, resp, urlguard
from common.flickr_guard import FlickrGuard
from common.jobstore import JobStore
from common.mongo import Mongo
from common.service import Check, GrpcServer, bootstrap, run_service, start_metrics
from common.settings import Settings
from common.tokens import TokenStore
from common.vault import LocalKeyProvider, Vault
from worker import metrics
from worker.cache_client import CacheClient
from worker.consumer import StreamConsumer
from worker.executor import Executor
from worker.flickr import FlickrClient
from worker.warmer import Warmer
from worker.webhooks import WebhookSender


class WorkerApp:
    """One worker replica: job consumer, webhook consumer, health."""

    name = "worker"

    def __init__(self, settings: Settings, consumer: str | None = None) -> None:
        self.settings = settings
        self.consumer_name = consumer or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.redis = redisio.client(settings.redis_url)
        # The per-turn steps of a run (claims' and outcomes' hot copies, announcements, acknowledgements,
        # releases) go over one lean connection (common.resp); everything else uses redis-py.
        self.wire = resp.Multiplexed(settings.redis_url)
        self.blocking = redisio.blocking_client(settings.redis_url)
        self.mongo = Mongo.from_settings(settings)
        self.vault = Vault(LocalKeyProvider.from_settings(settings))
        self.store = JobStore.from_settings(self.mongo.jobs, self.redis, settings, self.wire)
        self.flickr = FlickrClient(settings.flickr_endpoints, settings.flickr_timeout_s)
        self.cache = CacheClient(
            settings.cache_addr,
            settings.cache_timeout_s,
            window_s=settings.cache_batch_window_ms / 1000,
            max_batch=settings.cache_batch_max_ops,
        )
        tokens = TokenStore(self.mongo.tokens, self.vault, self.redis)
        self.executor = Executor(
            settings, self.redis, self.store, tokens, self.flickr, self.cache, self.consumer_name, self.wire
        )
        # Off by default (CACHE_WARM_ENABLED): then no warming task exists at all.
        self.warmer = self._warmer(tokens) if settings.cache_warm_enabled else None
        self.jobs = self._job_consumer()
        self.webhooks = self._webhook_sender()
        self.hooks = self._hook_consumer()
        self.grpc = GrpcServer([], settings.bind_host, settings.worker_port)
        self.port = self.grpc.port
        self.metrics_port = -1

    def _warmer(self, tokens: TokenStore) -> Warmer:
        """Cache warming: popular entries refetched shortly before they expire."""
        return Warmer(
            self.settings,
            self.redis,
            self.cache,
            tokens,
            self.flickr,
            FlickrGuard(self.redis, self.settings),
            self.consumer_name,
        )

    def _job_consumer(self) -> StreamConsumer:
        """The work streams' consumer: each entry goes to `Executor.execute`."""
        return StreamConsumer(
            self.redis,
            self.blocking,
            [keys.work_stream(t) for t in keys.TARGETS],
            keys.WORKER_GROUP,
            self.consumer_name,
            self.executor.execute,
            concurrency=self.settings.worker_concurrency,
            visibility_timeout_s=self.settings.worker_visibility_timeout_s,
            on_claim=metrics.CLAIMED.inc,
        )

    def _webhook_sender(self) -> WebhookSender:
        """Signs and POSTs a final state's webhook, with its retries and delivery lease."""
        return WebhookSender(
            self.store,
            self.vault,
            self.redis,
            self.settings.webhook_max_attempts,
            self.settings.webhook_timeout_s,
            # Shorter than the stream's visibility timeout: a dead holder's entry finds it gone.
            lease_s=0.8 * self.settings.webhook_visibility_timeout_s,
            guard=urlguard.UrlGuard.from_settings(self.settings),
        )

    def _hook_consumer(self) -> StreamConsumer:
        """The fh:hooks consumer: each entry is one webhook delivery (`_deliver`)."""
        return StreamConsumer(
            self.redis,
            self.blocking,
            [keys.WEBHOOKS],
            keys.WEBHOOK_GROUP,
            self.consumer_name,
            self._deliver,
            concurrency=max(4, self.settings.worker_concurrency // 2),
            visibility_timeout_s=self.settings.webhook_visibility_timeout_s,
        )

    async def _deliver(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        await self.webhooks.deliver(fields.get("job_id", ""))
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, keys.WEBHOOK_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def start(self) -> None:
        """Open clients, then start consuming and serving health."""
        await self.mongo.ensure_indexes()
        await self.flickr.start()
        await self.webhooks.start()
        await self.jobs.start()
        await self.hooks.start()
        if self.warmer is not None:
            self.warmer.start()
        checks: dict[str, Check] = {"redis": self.redis.ping, "mongo": lambda: self.mongo.db.command("ping")}
        await self.grpc.start(checks, self.settings.readiness_interval_s)
        self.metrics_port = start_metrics(self.settings.worker_metrics_port)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, stop reading, drain within `grace`, hand back the rest, close clients."""
        await self.grpc.health.enter_graceful_shutdown()
        if self.warmer is not None:
            await self.warmer.stop()
        await self.jobs.stop(grace)
        await self.executor.close()
        await self.hooks.stop(min(grace, 5.0))
        await self.grpc.stop(1.0)
        await self.flickr.close()
        await self.webhooks.close()
        await self.cache.close()
        await self.blocking.aclose()
        await self.wire.close()
        await self.redis.aclose()
        await self.mongo.close()


async def run(settings: Settings) -> None:
    """Run a worker until SIGTERM."""
    bootstrap("worker", settings)
    await run_service(WorkerApp(settings), settings)
