"""The cache service's Prometheus metrics.

Per-method lookups are counted per replica (LOOKUPS: rate them for a current hit
ratio); the gauges come from the counts every replica shares in Redis and from
Redis' own INFO, refreshed every few seconds by each replica (take max() over
replicas, not sum()).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "flickrhub_cache_requests_total",
    "Cache operations by op (get, put, invalidate, stats, warm), method class (read, search, write, all) "
    "and outcome (hit, miss, stored, skipped, ok, error)",
    ["op", "method_class", "outcome"],
)
LOOKUPS = Counter(
    "flickrhub_cache_lookups_total",
    "Gets by Flickr method (unknown methods as `other`) and outcome (hit, miss, error); "
    'hit ratio now: sum by (method) (rate(…{outcome="hit"}[5m])) / sum by (method) (rate(…[5m]))',
    ["method", "outcome"],
)
HIT_RATIO = Gauge(
    "flickrhub_cache_hit_ratio",
    "hits / (hits + misses) per Flickr method, over every replica's lookups since the shared counts began",
    ["method"],
)
EVICTED_KEYS = Gauge(
    "flickrhub_cache_evicted_keys",
    "Keys the cache Redis evicted under its memory cap (allkeys-lru) since it started (INFO evicted_keys)",
)
USED_MEMORY = Gauge("flickrhub_cache_used_memory_bytes", "Memory the cache Redis uses (INFO used_memory)")
STORED_KEYS = Gauge("flickrhub_cache_keys", "Keys in the cache Redis (DBSIZE)")
WARM_CANDIDATES = Counter(
    "flickrhub_cache_warm_candidates_total", "Popular entries near expiry handed to a worker to refetch"
)
OP_SECONDS = Histogram(
    "flickrhub_cache_op_seconds",
    "Time a cache operation spent in the service, Redis included",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

BATCH_OPS = Histogram(
    "flickrhub_cache_batch_ops",
    "Operations per batch (Exchange, ExchangeStream); each batch is one Redis round trip",
    ["rpc"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@contextmanager
def timed(op: str) -> Iterator[None]:
    """Observe the block's duration in OP_SECONDS, failures included."""
    started = time.perf_counter()
    try:
        yield
    finally:
        OP_SECONDS.labels(op).observe(time.perf_counter() - started)
