"""The gateway: its ports, how submissions are grouped, idempotency, WatchJob, and backpressure."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings.base import setting


@dataclass(frozen=True)
class GatewaySettings:
    """JobService and its neighbours (see services/gateway)."""

    bind_host: str = setting(
        "BIND_HOST", "127.0.0.1", "Interface the gRPC servers of every service bind (0.0.0.0 in containers)."
    )
    gateway_port: int = setting("GATEWAY_PORT", 50051, "Gateway gRPC port (0 = any free port).")
    gateway_metrics_port: int = setting(
        "GATEWAY_METRICS_PORT", 9101, "Gateway Prometheus port (0 = any, -1 = off)."
    )
    gateway_addr: str = setting("GATEWAY_ADDR", "127.0.0.1:50051", "Where the edge dials the gateway.")
    insert_batch_ms: float = setting(
        "GATEWAY_INSERT_BATCH_MS", 2.0, "Window in which submissions share one insert_many."
    )
    gateway_user_turns: int = setting(
        "GATEWAY_USER_TURNS",
        8,
        "SubmitJob calls of one user (token) in progress at once per gateway; more wait their turn "
        "(0 = no limit).",
        at_least=0,
    )
    idempotency_ttl_s: int = setting(
        "IDEMPOTENCY_TTL_S",
        86400,
        "Seconds an idempotency key is held in the queue Redis: a resubmission with the same key within "
        "them answers the first job; after them it makes a new one.",
        at_least=1,
    )
    list_jobs_max_examined: int = setting(
        "LIST_JOBS_MAX_EXAMINED",
        1000,
        "Rows one ListJobs call may read; a `method` filter matching few jobs then answers a short page "
        "with a token to go on from where it stopped (bounds each call's cost).",
        at_least=1,
    )
    watch_poll_s: float = setting(
        "WATCH_POLL_S",
        5.0,
        "How often a WatchJob stream re-reads its job when no change event came (events are hints: a "
        "lost one delays an update by at most this).",
        positive=True,
    )

    # Backpressure (gateway admission; see common.admission)
    client_max_pending_jobs: int = setting(
        "CLIENT_MAX_PENDING_JOBS",
        1000,
        "Open (not yet final) jobs one API key may have; more answers RESOURCE_EXHAUSTED / 429.",
        at_least=1,
    )
    max_buffered_jobs: int = setting(
        "MAX_BUFFERED_JOBS",
        200_000,
        "Open jobs FlickrHub holds in all (queued, moving, running, retrying); more answers "
        "UNAVAILABLE / 503.",
        at_least=1,
    )
    backpressure_retry_after_s: float = setting(
        "BACKPRESSURE_RETRY_AFTER_S", 5.0, "Retry-After of a submission refused by either cap.", positive=True
    )
