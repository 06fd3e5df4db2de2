"""The cache service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "flickrhub_cache_requests_total", "Cache operations by outcome", ["op", "method_class", "outcome"]
)
OP_SECONDS = Histogram(
    "flickrhub_cache_op_seconds",
    "Cache operation latency",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)
