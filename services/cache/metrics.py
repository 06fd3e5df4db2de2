"""The cache service's Prometheus metrics (the hit ratio is hits / (hits + misses) of REQUESTS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "flickrhub_cache_requests_total",
    "Cache operations by op (get, put, invalidate, stats), method class (read, search, write, all) "
    "and outcome (hit, miss, stored, skipped, ok, error)",
    ["op", "method_class", "outcome"],
)
OP_SECONDS = Histogram(
    "flickrhub_cache_op_seconds",
    "Time a cache operation spent in the service, Redis included",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


@contextmanager
def timed(op: str) -> Iterator[None]:
    """Observe the block's duration in OP_SECONDS, failures included."""
    started = time.perf_counter()
    try:
        yield
    finally:
        OP_SECONDS.labels(op).observe(time.perf_counter() - started)
