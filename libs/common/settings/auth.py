"""Client authentication: API keys, HMAC signing, trusted proxies, per-key limits and the audit log."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

# bcrypt cost of API key hashes: below 10 a stolen hash is cheap to brute-force; above 16 one
# check takes seconds of CPU.
BCRYPT_MIN_ROUNDS = 10
BCRYPT_MAX_ROUNDS = 16
# MongoDB keeps a TTL in a 32-bit count of seconds: 24,855 days and a little more.
AUDIT_RETENTION_MAX_DAYS = 24_855


@dataclass(frozen=True)
class AuthSettings:
    """Who may call FlickrHub, how often, and what is recorded of it (see docs/auth.md)."""

    api_key_cache_s: float = setting(
        "API_KEY_CACHE_S",
        60.0,
        "Seconds a verified API key (bcrypt check and key record) is reused from memory (0 = check every "
        "request). Rotation and revocation end it at once on every replica (a per-key epoch in Redis); "
        "this is only the backstop should that signal be lost.",
        at_least=0,
    )
    api_key_cache_max: int = setting(
        "API_KEY_CACHE_MAX",
        10000,
        "Most API keys kept verified in one gateway's memory (least recent go).",
        at_least=1,
    )
    api_key_bcrypt_rounds: int = setting(
        "API_KEY_BCRYPT_ROUNDS",
        12,
        "bcrypt cost factor of new API key hashes (10-16; each step doubles the CPU of a check). "
        "Existing hashes keep the cost they were made with.",
        at_least=BCRYPT_MIN_ROUNDS,
        at_most=BCRYPT_MAX_ROUNDS,
    )
    api_key_bcrypt_concurrency: int = setting(
        "API_KEY_BCRYPT_CONCURRENCY",
        4,
        "bcrypt checks one gateway runs at once (each about 0.2 s of CPU at cost 12); more wait, so a "
        "flood of bad keys cannot take every thread.",
        at_least=1,
    )
    api_key_default_rate_per_min: int = setting(
        "API_KEY_DEFAULT_RATE_PER_MIN",
        1000,
        "Requests per minute of a key that sets no limit of its own (read when the key is loaded, so a "
        "change reaches every such key).",
        at_least=1,
    )
    auth_clock_skew_s: int = setting(
        "AUTH_CLOCK_SKEW_S", 300, "Largest difference between a signed request's x-timestamp and our clock."
    )
    trusted_proxies: str = setting(
        "TRUSTED_PROXIES",
        "127.0.0.1/32,::1/128",
        "Comma-separated CIDRs of proxies (the REST edge) whose x-forwarded-for and x-fh-http-* metadata "
        "the gateway believes; every other peer is the client itself.",
    )
    flickrhub_api_key: str = setting(
        "FLICKRHUB_API_KEY",
        "",
        "The API key the `flickrhub` CLI and the load driver present (`--api-key` wins).",
        secret=True,
    )
    audit_queue_max: int = setting(
        "AUDIT_QUEUE_MAX",
        10000,
        "Audit entries buffered for the background writer; beyond that they are dropped (counted).",
        at_least=1,
    )
    audit_batch_ms: float = setting(
        "AUDIT_BATCH_MS", 200.0, "Window in which audit entries share one insert_many."
    )
    audit_retention_days: float = setting(
        "AUDIT_RETENTION_DAYS",
        365.0,
        "Days audit entries stay in MongoDB (the TTL index on `audit_log.created_at`; services that "
        "write change it at start when it differs).",
        positive=True,
        at_most=AUDIT_RETENTION_MAX_DAYS,
    )

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TRUSTED_PROXIES as networks."""
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.trusted_proxies.split(",")
            if part.strip()
        )

    @property
    def audit_retention_s(self) -> int:
        """AUDIT_RETENTION_DAYS in whole seconds (what a TTL index holds; 0 would mean at once)."""
        return max(1, round(self.audit_retention_days * 86400))


def check_auth(s: Settings) -> None:
    """TRUSTED_PROXIES parses as networks (once here, so a bad value fails at start)."""
    try:
        s.trusted_proxy_networks  # noqa: B018 - parsed for its error
    except ValueError as exc:
        raise SettingsError(f"TRUSTED_PROXIES: {exc}") from None
