"""The cache: its service, TTLs per method class, batching of workers' calls, and warming."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import flickr_methods
from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

# A cached answer lives at most a day, whatever its method's TTL says.
CACHE_MAX_TTL_S = 24 * 3600
CACHE_METHOD_RE = re.compile(r"flickr(\.[A-Za-z0-9_]+){2,}")


@dataclass(frozen=True)
class CacheSettings:
    """The cache service and how workers use it (see services/cache)."""

    cache_port: int = setting("CACHE_PORT", 50053, "Cache service gRPC port.")
    cache_metrics_port: int = setting("CACHE_METRICS_PORT", 9102, "Cache service Prometheus port.")
    cache_addr: str = setting("CACHE_ADDR", "127.0.0.1:50053", "Where workers dial the cache service.")
    cache_ttl_read_s: int = setting("CACHE_TTL_READ_S", 300, "TTL of cached read answers.", at_least=1)
    cache_ttl_search_s: int = setting("CACHE_TTL_SEARCH_S", 60, "TTL of cached search answers.", at_least=1)
    cache_timeout_s: float = setting(
        "CACHE_TIMEOUT_S", 0.5, "Deadline of a cache call; a slow cache counts as a miss."
    )
    cache_batch_window_ms: float = setting(
        "CACHE_BATCH_WINDOW_MS",
        5.0,
        "How long a worker's cache lookup or store waits for others to share one message to the cache "
        "service (0-100; 0 sends at once); while one batch is unanswered the next keeps gathering.",
        at_least=0,
        at_most=100,
    )
    cache_batch_max_ops: int = setting(
        "CACHE_BATCH_MAX_OPS",
        64,
        "Most cache operations in one message to the cache service (1-256).",
        at_least=1,
        at_most=256,
    )
    cache_redis_max_in_flight: int = setting(
        "CACHE_REDIS_MAX_IN_FLIGHT",
        64,
        "Calls one cache service replica has in flight to the cache Redis at once (its connection "
        "pool's size); more wait their turn.",
        at_least=1,
    )
    cache_ttl_overrides: str = setting(
        "CACHE_TTL_OVERRIDES",
        "",
        "Per-method TTLs over the read/search classes: `flickr.photos.getInfo=600,flickr.photos.search=30` "
        "(seconds, 0 = never cache that method; write methods are never cached and cannot be listed).",
    )
    cache_warm_enabled: bool = setting(
        "CACHE_WARM_ENABLED",
        False,
        "Keep the most requested reads fresh: the cache counts requests per key, a worker re-fetches "
        "popular entries shortly before they expire (spending the shared Flickr budget).",
    )
    cache_warm_interval_s: float = setting(
        "CACHE_WARM_INTERVAL_S",
        10.0,
        "How often one worker looks for popular entries near expiry.",
        positive=True,
    )
    cache_warm_top: int = setting(
        "CACHE_WARM_TOP",
        20,
        "How many of the most requested keys warming considers.",
        at_least=1,
    )
    cache_hot_keep_factor: int = setting(
        "CACHE_HOT_KEEP_FACTOR",
        50,
        "Warming's request counts are kept for this many times CACHE_WARM_TOP keys (the rest is trimmed "
        "every second): room for keys on their way up, at the cost of the set's memory.",
        at_least=1,
    )
    cache_warm_min_requests: int = setting(
        "CACHE_WARM_MIN_REQUESTS",
        3,
        "Requests a key needs (counts halve every minute) before warming refreshes it.",
        at_least=1,
    )
    cache_warm_before_s: int = setting(
        "CACHE_WARM_BEFORE_S",
        30,
        "Refresh a popular entry once it has at most this many seconds left.",
        at_least=1,
    )
    cache_warm_max_per_min: int = setting(
        "CACHE_WARM_MAX_PER_MIN",
        10,
        "Flickr calls warming may make per minute, across all workers.",
        at_least=1,
    )

    @property
    def cache_ttls(self) -> dict[str, int]:
        """CACHE_TTL_OVERRIDES as Flickr method → seconds (0: never cached)."""
        return parse_cache_ttls(self.cache_ttl_overrides)


def check_cache(s: Settings) -> None:
    """CACHE_TTL_OVERRIDES names read methods with TTLs FlickrHub allows."""
    try:
        parse_cache_ttls(s.cache_ttl_overrides)
    except ValueError as exc:
        raise SettingsError(f"CACHE_TTL_OVERRIDES: {exc}") from None


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
