"""The worker's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("flickrhub_worker_jobs_total", "Job executions by outcome", ["outcome"])
FLICKR_CALLS = Counter("flickrhub_flickr_calls_total", "Flickr HTTP calls by result", ["result"])
FLICKR_SECONDS = Histogram(
    "flickrhub_flickr_call_seconds",
    "Flickr call latency",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CACHE = Counter("flickrhub_worker_cache_total", "Cache lookups from the worker", ["outcome"])
CACHE_WARMED = Counter(
    "flickrhub_worker_cache_warmed_total",
    "Popular cache entries refetched before expiry, by outcome (refreshed, failed, skipped, stopped)",
    ["outcome"],
)
IN_FLIGHT = Gauge("flickrhub_worker_in_flight", "Jobs being executed")
RECONCILED = Counter(
    "flickrhub_worker_reconciled_total",
    "Writes taken over from a dead worker, by what a Flickr read showed "
    "(applied, absent, unknown; unchecked: no read proves the method's effect)",
    ["verdict"],
)
CLAIMED = Counter("flickrhub_worker_claimed_total", "Entries claimed back from dead workers")
DEAD_LETTERS = Counter(
    "flickrhub_worker_dead_letters_total", "Jobs sent to the dead-letter stream", ["reason"]
)
WEBHOOKS = Counter("flickrhub_webhook_deliveries_total", "Webhook delivery attempts by result", ["result"])
JOB_SECONDS = Histogram(
    "flickrhub_job_end_to_end_seconds",
    "From acceptance to final state",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60),
)
