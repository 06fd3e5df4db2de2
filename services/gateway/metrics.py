"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SUBMITTED = Counter("flickrhub_gateway_jobs_submitted_total", "Job submissions by outcome", ["outcome"])
QUEUE_DEPTH = Gauge("flickrhub_queue_depth", "Entries waiting in a queue", ["queue"])
