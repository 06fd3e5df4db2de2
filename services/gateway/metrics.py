"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter

SUBMITTED = Counter("flickrhub_gateway_jobs_submitted_total", "Job submissions by outcome", ["outcome"])
