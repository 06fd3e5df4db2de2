"""The worker: job execution, retries, dead letters, webhooks and chaos failpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import failpoints as failpoint_config
from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings


@dataclass(frozen=True)
class WorkerSettings:
    """How jobs are executed, retried and reported (see services/worker)."""

    worker_port: int = setting("WORKER_PORT", 50054, "Worker gRPC port (health only).")
    worker_metrics_port: int = setting(
        "WORKER_METRICS_PORT", 9120, "Worker Prometheus port (`make run` gives replica i port+i)."
    )
    worker_concurrency: int = setting(
        "WORKER_CONCURRENCY", 32, "Jobs one worker process executes at once.", at_least=1
    )
    worker_visibility_timeout_s: float = setting(
        "WORKER_VISIBILITY_TIMEOUT_S",
        60.0,
        "Idle time after which another worker claims an entry (XAUTOCLAIM).",
    )
    worker_max_attempts: int = setting(
        "WORKER_MAX_ATTEMPTS", 5, "Attempts before a transiently failing job fails.", at_least=1
    )
    worker_backoff_base_s: float = setting(
        "WORKER_BACKOFF_BASE_S", 1.0, "First retry delay; doubles each attempt."
    )
    worker_backoff_max_s: float = setting("WORKER_BACKOFF_MAX_S", 300.0, "Longest retry delay.")
    dead_letters_max: int = setting(
        "DEAD_LETTERS_MAX",
        100_000,
        "Entries the dead-letter stream (`fh:dlq`) keeps, about (XADD MAXLEN ~): the oldest go first.",
        at_least=1,
    )
    failpoints: str = setting(
        "FAILPOINTS",
        "",
        "Chaos testing only, must stay empty in production (refused there): `point=exit` or "
        "`point=exit-after:<ms>`, comma-separated, kills the process (`os._exit(137)`, like SIGKILL) "
        "at that step of a job; points in `common/failpoints.py`, e.g. `worker.recorded=exit`.",
    )
    webhook_max_attempts: int = setting(
        "WEBHOOK_MAX_ATTEMPTS", 8, "Delivery attempts of one webhook.", at_least=1
    )
    webhook_timeout_s: float = setting("WEBHOOK_TIMEOUT_S", 10.0, "Timeout of one webhook POST.")
    webhook_visibility_timeout_s: float = setting(
        "WEBHOOK_VISIBILITY_TIMEOUT_S",
        600.0,
        "Idle time after which another worker takes over a webhook delivery a worker held (it must "
        "outlast every attempt and backoff of one delivery: delivery entries have no heartbeat).",
        positive=True,
    )
    webhook_allowed_hosts: str = setting(
        "WEBHOOK_ALLOWED_HOSTS",
        "",
        "Comma list of host names and CIDRs webhooks may reach although they are loopback, private, "
        "link-local or metadata addresses (e.g. `127.0.0.1,hooks.internal,10.1.0.0/16`).",
    )
    webhook_host_overrides: str = setting(
        "WEBHOOK_HOST_OVERRIDES",
        "",
        "Static DNS answers for webhook hosts, `name=ip|ip,other=ip` (like /etc/hosts; still checked).",
    )
    webhook_resolve_timeout_s: float = setting(
        "WEBHOOK_RESOLVE_TIMEOUT_S", 2.0, "Timeout of the DNS lookup that checks a webhook host."
    )
    upload_ticket_timeout_s: float = setting(
        "UPLOAD_TICKET_TIMEOUT_S",
        300.0,
        "How long a worker follows an async upload's ticket (checkTickets) before failing the job.",
    )


def check_worker(s: Settings) -> None:
    """Failpoints that parse (and none in production); webhook allow-list and overrides that parse."""
    try:
        failpoint_config.parse(s.failpoints)
    except ValueError as exc:
        raise SettingsError(f"FAILPOINTS: {exc}") from None
    if s.failpoints.strip() and s.environment == "production":
        raise SettingsError("FAILPOINTS: a chaos-testing aid, must be empty in production")
    from common import urlguard  # imported here: settings stays import-light for every process

    for name, raw, parse in (
        ("WEBHOOK_ALLOWED_HOSTS", s.webhook_allowed_hosts, urlguard.parse_allow_list),
        ("WEBHOOK_HOST_OVERRIDES", s.webhook_host_overrides, urlguard.parse_overrides),
    ):
        try:
            parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
