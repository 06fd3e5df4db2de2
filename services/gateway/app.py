"""The gateway process: JobService and AdminService over gRPC."""

from __future__ import annotations

import logging

from common import redisio, resp
from common.apikeys import ApiKeyStore
from common.blobs import BlobStore
from common.flickr_guard import FlickrGuard
from common.jobstore import JobStore
from common.mongo import Mongo
from common.service import Check, GrpcServer, bootstrap, insecure_channel, run_service, start_metrics
from common.settings import Settings
from common.tokens import TokenStore
from common.vault import LocalKeyProvider, Vault
from flickrhub.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    cache_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    legacy_pb2,
    legacy_pb2_grpc,
)
from gateway import auth_requests
from gateway.acceptance import Acceptance
from gateway.admin_servicer import AdminServicer
from gateway.audit import AuditWriter
from gateway.auth_interceptor import AuthInterceptor
from gateway.auth_requests import AuthRequestStore
from gateway.auth_servicer import AuthServicer
from gateway.authn import Authenticator
from gateway.events import EventHub
from gateway.jobs_servicer import JobServicer
from gateway.keys_servicer import ApiKeyServicer
from gateway.legacy_servicer import LegacyServicer
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# What the gateway serves (its health service names them all).
SERVICES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    legacy_pb2.DESCRIPTOR.services_by_name["LegacyService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
)


class GatewayApp:
    """Wires the gateway's clients and servicers; `port` is known after start()."""

    name = "gateway"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open_stores()
        self._authenticate_clients()
        self.grpc = GrpcServer(
            SERVICES,
            settings.bind_host,
            settings.gateway_port,
            interceptors=[AuthInterceptor(self.authenticator, self.limiter, self.audit)],
        )
        self._serve_jobs()
        self._serve_operators()
        self.port = self.grpc.port
        self.metrics_port = -1

    def _open_stores(self) -> None:
        """Redis, MongoDB, the vault, and the token and job stores on them."""
        settings = self.settings
        self.redis = redisio.client(settings.redis_url)
        # The per-turn steps of a submission (admission, the commit's pipeline) go over one lean
        # connection (common.resp); everything else uses redis-py.
        self.wire = resp.Multiplexed(settings.redis_url)
        self.mongo = Mongo.from_settings(settings)
        self.vault = Vault(LocalKeyProvider.from_settings(settings))
        self.tokens = TokenStore(self.mongo.tokens, self.vault, self.redis)
        self.store = JobStore.from_settings(self.mongo.jobs, self.redis, settings, self.wire)

    def _authenticate_clients(self) -> None:
        """Client authentication, per-key limits and the audit log: one interceptor (gateway.policy)."""
        settings = self.settings
        self.api_keys = ApiKeyStore.from_settings(self.mongo.api_keys, self.vault, settings, redis=self.redis)
        self.authenticator = Authenticator(
            self.api_keys,
            self.redis,
            cache_s=settings.api_key_cache_s,
            cache_max=settings.api_key_cache_max,
            skew_s=settings.auth_clock_skew_s,
            trusted_proxies=settings.trusted_proxy_networks,
            bcrypt_concurrency=settings.api_key_bcrypt_concurrency,
        )
        self.audit = AuditWriter(
            self.mongo.audit_log,
            settings.audit_queue_max,
            settings.audit_batch_ms,
            on_flush=self.authenticator.flush_last_used,
        )
        self.limiter = RateLimiter(self.redis, settings.api_key_default_rate_per_min)

    def _serve_jobs(self) -> None:
        """JobService and the original API's LegacyService; both accept jobs through gateway.acceptance."""
        blobs = BlobStore(self.store.jobs.database)
        self.acceptance = Acceptance.from_settings(
            self.settings, self.redis, self.wire, self.store, self.tokens, self.vault, blobs
        )
        self.events = EventHub(self.settings.redis_url)
        jobs = JobServicer(self.settings, self.acceptance, self.store, blobs, self.events, self.redis)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, self.grpc.server)
        legacy_pb2_grpc.add_LegacyServiceServicer_to_server(LegacyServicer(jobs), self.grpc.server)

    def _serve_operators(self) -> None:
        """AdminService (queues, breakers, cache invalidation), AuthService (Flickr OAuth), ApiKeyService."""
        settings = self.settings
        self.guard = FlickrGuard(self.redis, settings)
        # Admin cache invalidation goes to the cache service (only AdminService.InvalidateCache uses it).
        self.cache_channel = insecure_channel(settings.cache_addr)
        admin = AdminServicer(
            self.redis,
            self.guard,
            cache_pb2_grpc.CacheServiceStub(self.cache_channel),
            max(2.0, settings.cache_timeout_s),
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, self.grpc.server)
        self.auth = AuthServicer(
            settings, self.tokens, AuthRequestStore(self.mongo.auth_requests, self.vault)
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self.auth, self.grpc.server)
        keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(
            ApiKeyServicer(self.api_keys, self.authenticator), self.grpc.server
        )

    async def start(self) -> None:
        """Indexes, event subscription, then serve."""
        await self.mongo.ensure_indexes(auth_requests.INDEXES)
        await self.events.start()
        self.audit.start()
        checks: dict[str, Check] = {"redis": self.redis.ping, "mongo": lambda: self.mongo.db.command("ping")}
        await self.grpc.start(checks, self.settings.readiness_interval_s)
        self.metrics_port = start_metrics(self.settings.gateway_metrics_port)
        log.info("gateway listening on %d", self.port)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let in-flight calls finish, flush pending inserts, close clients."""
        await self.grpc.stop(grace)
        await self.acceptance.drain()
        await self.audit.stop()
        await self.events.stop()
        await self.auth.close()
        await self.cache_channel.close()
        await self.wire.close()
        await self.redis.aclose()
        await self.mongo.close()


async def run(settings: Settings) -> None:
    """Run the gateway until SIGTERM."""
    bootstrap("gateway", settings)
    await run_service(GatewayApp(settings), settings)
