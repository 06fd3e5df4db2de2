"""Typed settings for every FlickrHub process: the only module that reads the environment.

Each field names its environment variable, its default and what it does; the
README's configuration table is generated from these definitions
(`python -m common.settings --markdown`). A bad value fails at start with the
variable's name in the message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from common import failpoints, flickr_methods

# A cached answer lives at most a day, whatever its method's TTL says.
CACHE_MAX_TTL_S = 24 * 3600
CACHE_METHOD_RE = re.compile(r"flickr(\.[A-Za-z0-9_]+){2,}")
SANDBOX_DEMO_CONSUMER_KEY = "demo-consumer-key"
SANDBOX_DEMO_CONSUMER_SECRET = "demo-consumer-secret"
# Flickr's OAuth endpoints (FLICKR-API.md §1.1); the sandbox serves the same paths.
FLICKR_OAUTH_BASE = "https://www.flickr.com/services/oauth"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# bcrypt cost of API key hashes: below 10 a stolen hash is cheap to brute-force; above 16 one
# check takes seconds of CPU.
BCRYPT_MIN_ROUNDS = 10
BCRYPT_MAX_ROUNDS = 16
# MONGO_WRITE_CONCERN's choices (common.mongo.write_concern turns each into a WriteConcern).
MONGO_WRITE_CONCERNS = ("majority", "journaled", "unjournaled")


class SettingsError(ValueError):
    """A configuration variable holds a value FlickrHub cannot use."""


def _env(name: str, default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc, "secret": secret})


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    bool: _parse_bool,
    "int": int,
    "float": float,
    "str": str,
    "bool": _parse_bool,
}


@dataclass(frozen=True)
class Settings:
    """Every knob of FlickrHub; each service reads the fields it needs."""

    environment: str = _env(
        "FLICKRHUB_ENV",
        "demo",
        "`demo` allows built-in demo keys; `production` refuses to start without real ones.",
    )
    log_level: str = _env("LOG_LEVEL", "INFO", "Python log level of every service (JSON lines on stderr).")
    shutdown_grace_s: float = _env(
        "SHUTDOWN_GRACE_S", 20.0, "Seconds a service may drain in-flight work after SIGTERM."
    )
    readiness_interval_s: float = _env(
        "READINESS_INTERVAL_S", 5.0, "How often services probe Redis/MongoDB for their gRPC readiness status."
    )

    # Stores
    redis_url: str = _env(
        "REDIS_URL",
        "redis://127.0.0.1:6390/0",
        "Queue Redis (streams, leases; must run `noeviction` with AOF).",
    )
    cache_redis_url: str = _env(
        "CACHE_REDIS_URL", "redis://127.0.0.1:6391/0", "Cache Redis (runs `allkeys-lru` with a memory cap)."
    )
    mongo_url: str = _env(
        "MONGO_URL",
        "mongodb://127.0.0.1:27018/?directConnection=true&retryWrites=false",
        "MongoDB URI (keep `retryWrites=false` for SecantusDB).",
    )
    mongo_db: str = _env("MONGO_DB", "flickrhub", "MongoDB database name.")
    mongo_write_concern: str = _env(
        "MONGO_WRITE_CONCERN",
        "majority",
        "When MongoDB acknowledges a job document and every state change the pipeline relies on (claims, "
        "outcomes, tokens, API keys): `majority` (w: majority, j: true: journaled on a majority of a "
        "replica set; on a single server, journaled there), `journaled` (w: 1, j: true: the primary's "
        "journal only) or `unjournaled` (w: 1: in memory, a crashed server loses acknowledged jobs; "
        "refused in production).",
    )
    mongo_write_timeout_ms: int = _env(
        "MONGO_WRITE_TIMEOUT_MS",
        10000,
        "How long a write may wait for replica set members to satisfy MONGO_WRITE_CONCERN (wtimeout; 0: "
        "no bound). Past it the write fails, though the primary may have applied it.",
    )

    # Flickr
    flickr_api_key: str = _env(
        "FLICKR_API_KEY", "", "Flickr app consumer key; empty selects the local sandbox."
    )
    flickr_api_secret: str = _env("FLICKR_API_SECRET", "", "Flickr app consumer secret.", secret=True)
    sandbox_url: str = _env(
        "SANDBOX_URL", "http://127.0.0.1:8765", "Base URL of the Flickr sandbox (no-credentials mode)."
    )
    flickr_rest_url: str = _env(
        "FLICKR_REST_URL", "https://api.flickr.com/services/rest/", "Flickr REST endpoint."
    )
    flickr_upload_url: str = _env(
        "FLICKR_UPLOAD_URL", "https://up.flickr.com/services/upload/", "Flickr upload endpoint."
    )
    flickr_replace_url: str = _env(
        "FLICKR_REPLACE_URL", "https://up.flickr.com/services/replace/", "Flickr replace endpoint."
    )
    flickr_timeout_s: float = _env("FLICKR_TIMEOUT_S", 30.0, "Timeout of one Flickr HTTP call.")
    flickr_oauth_callback_url: str = _env(
        "FLICKR_OAUTH_CALLBACK_URL",
        "",
        "Empty: OAuth out-of-band mode (the user pastes Flickr's verifier). Else callback mode: the "
        "edge's `/v1/auth/callback` URL Flickr redirects to (https; http://127.0.0.1… in demo).",
    )
    auth_request_ttl_s: int = _env(
        "AUTH_REQUEST_TTL_S", 900, "Seconds a started OAuth authorization may wait for its completion."
    )

    # Token vault
    vault_master_key: str = _env(
        "VAULT_MASTER_KEY",
        "",
        "Master keys that encrypt secrets at rest: `<base64 of 32 bytes>` (version 1) or "
        "`<version>:<base64>,<version>:<base64>` during a rotation (demo mode has a built-in one).",
        secret=True,
    )
    vault_key_file: str = _env(
        "VAULT_KEY_FILE", "", "File with the master keys in VAULT_MASTER_KEY's format (one per line allowed)."
    )
    vault_key_version: int = _env(
        "VAULT_KEY_VERSION", 0, "Master key version new secrets are encrypted with (0 = the highest present)."
    )

    # Gateway
    bind_host: str = _env(
        "BIND_HOST", "127.0.0.1", "Interface the gRPC servers of every service bind (0.0.0.0 in containers)."
    )
    gateway_port: int = _env("GATEWAY_PORT", 50051, "Gateway gRPC port (0 = any free port).")
    gateway_metrics_port: int = _env(
        "GATEWAY_METRICS_PORT", 9101, "Gateway Prometheus port (0 = any, -1 = off)."
    )
    gateway_addr: str = _env("GATEWAY_ADDR", "127.0.0.1:50051", "Where the edge dials the gateway.")
    insert_batch_ms: float = _env(
        "GATEWAY_INSERT_BATCH_MS", 2.0, "Window in which submissions share one insert_many."
    )
    gateway_user_turns: int = _env(
        "GATEWAY_USER_TURNS",
        8,
        "SubmitJob calls of one user (token) in progress at once per gateway; more wait their turn "
        "(0 = no limit).",
    )

    # Mover
    mover_port: int = _env("MOVER_PORT", 50052, "Mover gRPC port (health only).")
    mover_metrics_port: int = _env(
        "MOVER_METRICS_PORT", 9110, "Mover Prometheus port (`make run` gives replica i port+i)."
    )
    mover_batch: int = _env("MOVER_BATCH", 50, "Entries one mover round takes from one token queue.")
    mover_claim_idle_s: float = _env(
        "MOVER_CLAIM_IDLE_S", 30.0, "Idle time after which a dead mover's entries are claimed."
    )
    mover_client_weights: str = _env(
        "MOVER_CLIENT_WEIGHTS",
        "",
        "Shares of the moves per client (API key id), `clientA=3,clientB=1`; clients not named weigh 1.",
    )
    mover_priority_weights: str = _env(
        "MOVER_PRIORITY_WEIGHTS",
        "high=4,normal=2,low=1",
        "Shares of a token's moves per job priority (high goes first, low is never starved).",
    )
    mover_work_backlog: int = _env(
        "MOVER_WORK_BACKLOG",
        32,
        "Entries the mover lets wait undelivered in the work streams; more stays in the token queues, "
        "where fairness and priorities still apply (too low starves the workers between rounds).",
    )
    mover_token_in_flight: int = _env(
        "MOVER_TOKEN_IN_FLIGHT",
        4,
        "Entries of one token in the work streams at once, waiting or running (0: no cap); a flood then "
        "holds few worker slots and little CPU, so other tokens' jobs do not queue behind it. One "
        "token's calls are bounded by the Flickr budget (about 1/s per API key), which 4 in flight "
        "sustains at any Flickr latency under 4 s.",
    )
    flickr_budget_per_hour: int = _env(
        "FLICKR_BUDGET_PER_HOUR",
        3500,
        "Flickr calls per hour per API key, smoothed and shared by every mover (Flickr allows 3,600).",
    )
    flickr_budget_burst: int = _env(
        "FLICKR_BUDGET_BURST", 5, "Calls that may go early within the hourly budget."
    )
    breaker_key_open_s: float = _env(
        "BREAKER_KEY_OPEN_S",
        300.0,
        "Pause of an API key after 3 consecutive Flickr 429s (doubles when repeated).",
    )
    breaker_flickr_threshold: int = _env(
        "BREAKER_FLICKR_THRESHOLD", 10, "Consecutive 5xx/timeouts/connection errors that pause all moving."
    )
    breaker_flickr_open_s: float = _env(
        "BREAKER_FLICKR_OPEN_S", 30.0, "Pause after a Flickr-wide outage is detected (doubles when repeated)."
    )

    # Worker
    worker_port: int = _env("WORKER_PORT", 50054, "Worker gRPC port (health only).")
    worker_metrics_port: int = _env(
        "WORKER_METRICS_PORT", 9120, "Worker Prometheus port (`make run` gives replica i port+i)."
    )
    worker_concurrency: int = _env("WORKER_CONCURRENCY", 32, "Jobs one worker process executes at once.")
    worker_visibility_timeout_s: float = _env(
        "WORKER_VISIBILITY_TIMEOUT_S",
        60.0,
        "Idle time after which another worker claims an entry (XAUTOCLAIM).",
    )
    worker_max_attempts: int = _env(
        "WORKER_MAX_ATTEMPTS", 5, "Attempts before a transiently failing job fails."
    )
    worker_backoff_base_s: float = _env(
        "WORKER_BACKOFF_BASE_S", 1.0, "First retry delay; doubles each attempt."
    )
    worker_backoff_max_s: float = _env("WORKER_BACKOFF_MAX_S", 300.0, "Longest retry delay.")
    failpoints: str = _env(
        "FAILPOINTS",
        "",
        "Chaos testing only, must stay empty in production (refused there): `point=exit` or "
        "`point=exit-after:<ms>`, comma-separated, kills the process (`os._exit(137)`, like SIGKILL) "
        "at that step of a job; points in `common/failpoints.py`, e.g. `worker.recorded=exit`.",
    )
    webhook_max_attempts: int = _env("WEBHOOK_MAX_ATTEMPTS", 8, "Delivery attempts of one webhook.")
    webhook_timeout_s: float = _env("WEBHOOK_TIMEOUT_S", 10.0, "Timeout of one webhook POST.")
    webhook_visibility_timeout_s: float = _env(
        "WEBHOOK_VISIBILITY_TIMEOUT_S",
        600.0,
        "Idle time after which another worker takes over a webhook delivery a worker held (it must "
        "outlast every attempt and backoff of one delivery: delivery entries have no heartbeat).",
    )
    webhook_allowed_hosts: str = _env(
        "WEBHOOK_ALLOWED_HOSTS",
        "",
        "Comma list of host names and CIDRs webhooks may reach although they are loopback, private, "
        "link-local or metadata addresses (e.g. `127.0.0.1,hooks.internal,10.1.0.0/16`).",
    )
    webhook_host_overrides: str = _env(
        "WEBHOOK_HOST_OVERRIDES",
        "",
        "Static DNS answers for webhook hosts, `name=ip|ip,other=ip` (like /etc/hosts; still checked).",
    )
    webhook_resolve_timeout_s: float = _env(
        "WEBHOOK_RESOLVE_TIMEOUT_S", 2.0, "Timeout of the DNS lookup that checks a webhook host."
    )
    upload_ticket_timeout_s: float = _env(
        "UPLOAD_TICKET_TIMEOUT_S",
        300.0,
        "How long a worker follows an async upload's ticket (checkTickets) before failing the job.",
    )

    # Cache
    cache_port: int = _env("CACHE_PORT", 50053, "Cache service gRPC port.")
    cache_metrics_port: int = _env("CACHE_METRICS_PORT", 9102, "Cache service Prometheus port.")
    cache_addr: str = _env("CACHE_ADDR", "127.0.0.1:50053", "Where workers dial the cache service.")
    cache_ttl_read_s: int = _env("CACHE_TTL_READ_S", 300, "TTL of cached read answers.")
    cache_ttl_search_s: int = _env("CACHE_TTL_SEARCH_S", 60, "TTL of cached search answers.")
    cache_timeout_s: float = _env(
        "CACHE_TIMEOUT_S", 0.5, "Deadline of a cache call; a slow cache counts as a miss."
    )
    cache_batch_window_ms: float = _env(
        "CACHE_BATCH_WINDOW_MS",
        5.0,
        "How long a worker's cache lookup or store waits for others to share one message to the cache "
        "service (0-100; 0 sends at once); while one batch is unanswered the next keeps gathering.",
    )
    cache_batch_max_ops: int = _env(
        "CACHE_BATCH_MAX_OPS", 64, "Most cache operations in one message to the cache service (1-256)."
    )
    cache_ttl_overrides: str = _env(
        "CACHE_TTL_OVERRIDES",
        "",
        "Per-method TTLs over the read/search classes: `flickr.photos.getInfo=600,flickr.photos.search=30` "
        "(seconds, 0 = never cache that method; write methods are never cached and cannot be listed).",
    )
    cache_warm_enabled: bool = _env(
        "CACHE_WARM_ENABLED",
        False,
        "Keep the most requested reads fresh: the cache counts requests per key, a worker re-fetches "
        "popular entries shortly before they expire (spending the shared Flickr budget).",
    )
    cache_warm_interval_s: float = _env(
        "CACHE_WARM_INTERVAL_S", 10.0, "How often one worker looks for popular entries near expiry."
    )
    cache_warm_top: int = _env(
        "CACHE_WARM_TOP", 20, "How many of the most requested keys warming considers (the set keeps 50x)."
    )
    cache_warm_min_requests: int = _env(
        "CACHE_WARM_MIN_REQUESTS",
        3,
        "Requests a key needs (counts halve every minute) before warming refreshes it.",
    )
    cache_warm_before_s: int = _env(
        "CACHE_WARM_BEFORE_S", 30, "Refresh a popular entry once it has at most this many seconds left."
    )
    cache_warm_max_per_min: int = _env(
        "CACHE_WARM_MAX_PER_MIN", 10, "Flickr calls warming may make per minute, across all workers."
    )

    # Edge
    edge_host: str = _env("EDGE_HOST", "127.0.0.1", "Interface the REST edge binds.")
    edge_port: int = _env("EDGE_PORT", 8080, "REST edge HTTP port.")
    edge_metrics_port: int = _env("EDGE_METRICS_PORT", 9103, "REST edge Prometheus port.")
    edge_upload_max_bytes: int = _env(
        "EDGE_UPLOAD_MAX_BYTES",
        101 * 1024 * 1024,
        "Largest POST /v1/uploads body (413 above): a 100 MiB photo plus 1 MiB for the job part.",
    )
    cors_allowed_origins: str = _env(
        "CORS_ALLOWED_ORIGINS",
        "",
        "Comma list of browser origins (`https://app.example.com`) that get CORS headers; empty = no CORS.",
    )

    # Client authentication (API keys, HMAC signing, per-key limits, audit)
    api_key_cache_s: float = _env(
        "API_KEY_CACHE_S",
        60.0,
        "Seconds a verified API key (bcrypt check and key record) is reused from memory (0 = check every "
        "request). Rotation and revocation end it at once on every replica (a per-key epoch in Redis); "
        "this is only the backstop should that signal be lost.",
    )
    api_key_cache_max: int = _env(
        "API_KEY_CACHE_MAX", 10000, "Most API keys kept verified in one gateway's memory (least recent go)."
    )
    api_key_bcrypt_rounds: int = _env(
        "API_KEY_BCRYPT_ROUNDS",
        12,
        "bcrypt cost factor of new API key hashes (10-16; each step doubles the CPU of a check). "
        "Existing hashes keep the cost they were made with.",
    )
    api_key_default_rate_per_min: int = _env(
        "API_KEY_DEFAULT_RATE_PER_MIN", 1000, "Requests per minute of a key that sets no limit of its own."
    )
    auth_clock_skew_s: int = _env(
        "AUTH_CLOCK_SKEW_S", 300, "Largest difference between a signed request's x-timestamp and our clock."
    )
    trusted_proxies: str = _env(
        "TRUSTED_PROXIES",
        "127.0.0.1/32,::1/128",
        "Comma-separated CIDRs of proxies (the REST edge) whose x-forwarded-for and x-fh-http-* metadata "
        "the gateway believes; every other peer is the client itself.",
    )
    flickrhub_api_key: str = _env(
        "FLICKRHUB_API_KEY",
        "",
        "The API key the `flickrhub` CLI and the load driver present (`--api-key` wins).",
        secret=True,
    )
    audit_queue_max: int = _env(
        "AUDIT_QUEUE_MAX",
        10000,
        "Audit entries buffered for the background writer; beyond that they are dropped (counted).",
    )
    audit_batch_ms: float = _env(
        "AUDIT_BATCH_MS", 200.0, "Window in which audit entries share one insert_many."
    )

    # Process
    event_loop: str = _env(
        "EVENT_LOOP",
        "uvloop",
        "`uvloop` or `asyncio`: the event loop every service runs on (uvloop costs less per loop turn).",
    )

    # Telemetry (the OpenTelemetry SDK also reads the standard OTEL_* variables itself)
    otel_traces_exporter: str = _env(
        "OTEL_TRACES_EXPORTER",
        "none",
        "`otlp` (OTEL_EXPORTER_OTLP_ENDPOINT), `console` or `none` (spans are then not recorded at all; "
        "trace ids still are). While exporting, the standard OTEL_TRACES_SAMPLER decides.",
    )

    # Jobs
    job_max_age_s: float = _env("JOB_MAX_AGE_S", 86400.0, "A job not started within this age expires.")
    job_retention_days: float = _env(
        "JOB_RETENTION_DAYS",
        90.0,
        "Days a completed, failed or cancelled job stays in MongoDB after it ended (the TTL index on "
        "`expire_at` then removes it).",
    )
    job_expired_retention_days: float = _env(
        "JOB_EXPIRED_RETENTION_DAYS", 30.0, "Days an expired job stays in MongoDB after it expired."
    )
    job_hot_ttl_s: int = _env(
        "JOB_HOT_TTL_S",
        86400,
        "Seconds a job's hot state stays in the queue Redis, where status reads find it before MongoDB "
        "(0 turns hot state off: every status read goes to MongoDB).",
    )
    job_hot_max_result_bytes: int = _env(
        "JOB_HOT_MAX_RESULT_BYTES",
        16384,
        "Largest result (JSON bytes) kept in a job's hot state; a job with a larger one is read from "
        "MongoDB.",
    )

    # Archival (see common.archive and docs/archive.md)
    archive_dir: str = _env(
        "ARCHIVE_DIR",
        ".data/archive",
        "Directory `flickrhub archive` writes zstd JSON-lines job archives to (one file per UTC day).",
    )
    archive_after_days: float = _env(
        "ARCHIVE_AFTER_DAYS",
        7.0,
        "`flickrhub archive` exports the jobs of every UTC day that ended at least this many days ago; "
        "must stay below both retention periods (a job must be archived before the TTL removes it).",
    )

    # Recovery from MongoDB (see common.recovery)
    recovery_interval_s: float = _env(
        "RECOVERY_INTERVAL_S",
        300.0,
        "How often one mover replica sweeps MongoDB for live jobs Redis no longer holds and re-enqueues "
        "them (0 = never; the marker check and `flickrhub recover` still work).",
    )
    recovery_min_age_s: float = _env(
        "RECOVERY_MIN_AGE_S",
        600.0,
        "The periodic sweep looks at queued or retrying jobs untouched this long and running jobs whose "
        "lease ran out this long ago (a full sweep after Redis lost its data looks at every one).",
    )
    recovery_check_s: float = _env(
        "RECOVERY_CHECK_S",
        5.0,
        "How often each mover looks for the queue Redis's marker; when it is gone (FLUSHALL, a restart "
        "without persistence) a full sweep starts at once.",
    )
    blob_orphan_age_s: float = _env(
        "BLOB_ORPHAN_AGE_S",
        3600.0,
        "Each recovery sweep removes upload blobs begun this long ago that no live job holds (left by a "
        "gateway killed mid-upload); must outlast the longest upload stream.",
    )

    # Backpressure (gateway admission; see common.admission)
    client_max_pending_jobs: int = _env(
        "CLIENT_MAX_PENDING_JOBS",
        1000,
        "Open (not yet final) jobs one API key may have; more answers RESOURCE_EXHAUSTED / 429.",
    )
    max_buffered_jobs: int = _env(
        "MAX_BUFFERED_JOBS",
        200_000,
        "Open jobs FlickrHub holds in all (queued, moving, running, retrying); more answers "
        "UNAVAILABLE / 503.",
    )
    backpressure_retry_after_s: float = _env(
        "BACKPRESSURE_RETRY_AFTER_S", 5.0, "Retry-After of a submission refused by either cap."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from `env` (default os.environ); `overrides` win (tests pass ports here)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif name in env:
                try:
                    values[f.name] = _PARSERS[f.type](env[name])
                except (ValueError, KeyError) as exc:
                    raise SettingsError(f"{name}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse combinations FlickrHub cannot run with."""
        if self.environment not in {"demo", "production"}:
            raise SettingsError(f"FLICKRHUB_ENV: expected demo or production, got {self.environment!r}")
        if bool(self.flickr_api_key) != bool(self.flickr_api_secret):
            raise SettingsError("FLICKR_API_KEY and FLICKR_API_SECRET: set both or neither")
        if self.event_loop not in {"uvloop", "asyncio"}:
            raise SettingsError(f"EVENT_LOOP: expected uvloop or asyncio, got {self.event_loop!r}")
        if self.otel_traces_exporter not in {"otlp", "console", "none"}:
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER: expected otlp, console or none, got {self.otel_traces_exporter!r}"
            )
        _check_callback_url(self.flickr_oauth_callback_url, self.environment)
        try:
            self.trusted_proxy_networks  # noqa: B018 - parsed once here so a bad value fails at start
        except ValueError as exc:
            raise SettingsError(f"TRUSTED_PROXIES: {exc}") from None
        _check_webhook_hosts(self.webhook_allowed_hosts, self.webhook_host_overrides)
        _check_origins(self.cors_allowed_origins)
        try:
            failpoints.parse(self.failpoints)
        except ValueError as exc:
            raise SettingsError(f"FAILPOINTS: {exc}") from None
        if self.failpoints.strip() and self.environment == "production":
            raise SettingsError("FAILPOINTS: a chaos-testing aid, must be empty in production")
        if self.mongo_write_concern not in MONGO_WRITE_CONCERNS:
            expected = ", ".join(MONGO_WRITE_CONCERNS)
            raise SettingsError(f"MONGO_WRITE_CONCERN: expected {expected}, got {self.mongo_write_concern!r}")
        if self.mongo_write_concern == "unjournaled" and self.environment == "production":
            raise SettingsError(
                "MONGO_WRITE_CONCERN: unjournaled loses acknowledged jobs; refused in production"
            )
        if self.mongo_write_timeout_ms < 0:
            raise SettingsError("MONGO_WRITE_TIMEOUT_MS: must be 0 (no bound) or positive")
        for name in (
            "worker_concurrency",
            "worker_max_attempts",
            "mover_batch",
            "webhook_max_attempts",
            "auth_request_ttl_s",
            "api_key_default_rate_per_min",
            "api_key_cache_max",
            "audit_queue_max",
            "mover_work_backlog",
            "client_max_pending_jobs",
            "max_buffered_jobs",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{self.env_name(name)}: must be at least 1")
        if self.gateway_user_turns < 0:
            raise SettingsError("GATEWAY_USER_TURNS: must be 0 (no limit) or more")
        if self.mover_token_in_flight < 0:
            raise SettingsError("MOVER_TOKEN_IN_FLIGHT: must be 0 (no cap) or more")
        if not BCRYPT_MIN_ROUNDS <= self.api_key_bcrypt_rounds <= BCRYPT_MAX_ROUNDS:
            raise SettingsError(
                f"API_KEY_BCRYPT_ROUNDS: must be {BCRYPT_MIN_ROUNDS}..{BCRYPT_MAX_ROUNDS}, "
                f"got {self.api_key_bcrypt_rounds}"
            )
        if self.api_key_cache_s < 0:
            raise SettingsError("API_KEY_CACHE_S: must not be negative")
        if self.backpressure_retry_after_s <= 0:
            raise SettingsError("BACKPRESSURE_RETRY_AFTER_S: must be positive")
        for name in ("job_retention_days", "job_expired_retention_days"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{self.env_name(name)}: must be positive")
        if self.job_hot_ttl_s < 0 or self.job_hot_max_result_bytes < 0:
            name = "job_hot_ttl_s" if self.job_hot_ttl_s < 0 else "job_hot_max_result_bytes"
            raise SettingsError(f"{self.env_name(name)}: must not be negative")
        # Archives hold whole UTC days: the last job of a day is archived up to one day after the age.
        if (
            not 0
            <= self.archive_after_days
            < min(self.job_retention_days, self.job_expired_retention_days) - 1
        ):
            raise SettingsError(
                "ARCHIVE_AFTER_DAYS: must be at least 0 and more than one day below JOB_RETENTION_DAYS "
                "and JOB_EXPIRED_RETENTION_DAYS (jobs are archived before the TTL removes them)"
            )
        if self.recovery_interval_s < 0:
            raise SettingsError("RECOVERY_INTERVAL_S: must be 0 (off) or positive")
        for name in (
            "recovery_min_age_s",
            "recovery_check_s",
            "blob_orphan_age_s",
            "webhook_visibility_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{self.env_name(name)}: must be positive")
        for name in ("mover_client_weights", "mover_priority_weights"):
            try:
                parse_weights(getattr(self, name))
            except ValueError as exc:
                raise SettingsError(f"{self.env_name(name)}: {exc}") from None
        if set(self.priority_weights) != {"high", "normal", "low"}:
            raise SettingsError("MOVER_PRIORITY_WEIGHTS: give a weight to each of high, normal and low")
        if self.flickr_budget_burst < 1 or self.flickr_budget_per_hour <= self.flickr_budget_burst:
            raise SettingsError("FLICKR_BUDGET_PER_HOUR: must exceed FLICKR_BUDGET_BURST (at least 1)")
        try:
            parse_cache_ttls(self.cache_ttl_overrides)
        except ValueError as exc:
            raise SettingsError(f"CACHE_TTL_OVERRIDES: {exc}") from None
        for name in ("cache_ttl_read_s", "cache_ttl_search_s", "cache_warm_top", "cache_warm_max_per_min"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{self.env_name(name)}: must be at least 1")
        if self.cache_warm_interval_s <= 0 or self.cache_warm_before_s < 1:
            raise SettingsError("CACHE_WARM_INTERVAL_S and CACHE_WARM_BEFORE_S: must be positive")
        if self.cache_warm_min_requests < 1:
            raise SettingsError("CACHE_WARM_MIN_REQUESTS: must be at least 1")
        if not 0 <= self.cache_batch_window_ms <= 100:
            raise SettingsError("CACHE_BATCH_WINDOW_MS: must be between 0 and 100")
        if not 1 <= self.cache_batch_max_ops <= 256:
            raise SettingsError("CACHE_BATCH_MAX_OPS: must be between 1 and 256")

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """Environment variable of a field."""
        return str(next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == field_name))

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TRUSTED_PROXIES as networks."""
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.trusted_proxies.split(",")
            if part.strip()
        )

    @property
    def admission_horizon_s(self) -> float:
        """How long an open job may count against the caps: twice the maximum age plus every attempt.

        An id older than this is dropped from the counts, which repairs a reservation whose
        release was lost (a gateway killed mid-submission) and, at worst, under-counts a job
        stuck open longer than any job should be.
        """
        run = self.flickr_timeout_s * 2 + 30 + self.upload_ticket_timeout_s
        return 2 * self.job_max_age_s + self.worker_max_attempts * (run + self.worker_backoff_max_s)

    @property
    def cache_ttls(self) -> dict[str, int]:
        """CACHE_TTL_OVERRIDES as Flickr method → seconds (0: never cached)."""
        return parse_cache_ttls(self.cache_ttl_overrides)

    @property
    def client_weights(self) -> dict[str, int]:
        """MOVER_CLIENT_WEIGHTS as client id → weight."""
        return parse_weights(self.mover_client_weights)

    @property
    def priority_weights(self) -> dict[str, int]:
        """MOVER_PRIORITY_WEIGHTS as priority → weight."""
        return parse_weights(self.mover_priority_weights)

    @property
    def uses_sandbox(self) -> bool:
        """True when no Flickr credentials are set: calls go to the local sandbox."""
        return not self.flickr_api_key

    @property
    def flickr_endpoints(self) -> FlickrEndpoints:
        """Flickr's real endpoints, or the sandbox's when no credentials are configured."""
        if self.uses_sandbox:
            base = self.sandbox_url.rstrip("/")
            return FlickrEndpoints(
                rest=f"{base}/services/rest/",
                upload=f"{base}/services/upload/",
                replace=f"{base}/services/replace/",
                consumer_key=SANDBOX_DEMO_CONSUMER_KEY,
                consumer_secret=SANDBOX_DEMO_CONSUMER_SECRET,
                request_token=f"{base}/services/oauth/request_token",
                authorize=f"{base}/services/oauth/authorize",
                access_token=f"{base}/services/oauth/access_token",
            )
        return FlickrEndpoints(
            rest=self.flickr_rest_url,
            upload=self.flickr_upload_url,
            replace=self.flickr_replace_url,
            consumer_key=self.flickr_api_key,
            consumer_secret=self.flickr_api_secret,
            request_token=f"{FLICKR_OAUTH_BASE}/request_token",
            authorize=f"{FLICKR_OAUTH_BASE}/authorize",
            access_token=f"{FLICKR_OAUTH_BASE}/access_token",
        )


@dataclass(frozen=True)
class FlickrEndpoints:
    """Where Flickr calls go and the app credentials that sign them."""

    rest: str
    upload: str
    replace: str
    consumer_key: str
    consumer_secret: str = field(repr=False)
    request_token: str = ""  # OAuth: where a request token is fetched
    authorize: str = ""  # OAuth: where the user's browser approves it
    access_token: str = ""  # OAuth: where the approved request token becomes an access token


def parse_weights(raw: str) -> dict[str, int]:
    """`name=weight,name=weight` (weights are whole numbers of at least 1) as a dict."""
    weights: dict[str, int] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"expected name=weight (a whole number of at least 1), got {part.strip()!r}")
        if name in weights:
            raise ValueError(f"{name!r} is given twice")
        weights[name] = int(value)
    return weights


def parse_cache_ttls(raw: str) -> dict[str, int]:
    """`flickr.ns.method=seconds,…` as a dict: read methods only, 0..86400 seconds each."""
    ttls: dict[str, int] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        method, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not CACHE_METHOD_RE.fullmatch(method) or not value.isdigit():
            raise ValueError(f"expected flickr.<namespace>.<name>=<seconds>, got {part.strip()!r}")
        if flickr_methods.is_write(method):
            raise ValueError(f"{method} writes (or is unknown to FlickrHub): it is never cached")
        if int(value) > CACHE_MAX_TTL_S:
            raise ValueError(f"{method}: at most {CACHE_MAX_TTL_S} seconds, got {value}")
        if method in ttls:
            raise ValueError(f"{method!r} is given twice")
        ttls[method] = int(value)
    return ttls


def _check_callback_url(url: str, environment: str) -> None:
    """FLICKR_OAUTH_CALLBACK_URL: empty (oob), https, or a loopback http URL in demo mode."""
    if not url:
        return
    parts = urlsplit(url)
    loopback_http = parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS and environment == "demo"
    if not parts.hostname or (parts.scheme != "https" and not loopback_http):
        raise SettingsError(
            "FLICKR_OAUTH_CALLBACK_URL: expected an https URL (or http://127.0.0.1… in demo mode), "
            f"got {url!r}"
        )


def _check_webhook_hosts(allowed: str, overrides: str) -> None:
    from common import urlguard  # imported here: settings stays import-light for every process

    for name, raw, parse in (
        ("WEBHOOK_ALLOWED_HOSTS", allowed, urlguard.parse_allow_list),
        ("WEBHOOK_HOST_OVERRIDES", overrides, urlguard.parse_overrides),
    ):
        try:
            parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None


def cors_origins(raw: str) -> frozenset[str]:
    """CORS_ALLOWED_ORIGINS as a set of `scheme://host[:port]` origins."""
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _check_origins(raw: str) -> None:
    for origin in cors_origins(raw):
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
            raise SettingsError(
                f"CORS_ALLOWED_ORIGINS: expected scheme://host[:port] origins, got {origin!r}"
            )


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = "" if f.metadata.get("secret") else f.default
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown_table())
