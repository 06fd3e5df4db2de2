"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter

SUBMITTED = Counter("flickrhub_gateway_jobs_submitted_total", "Job submissions by outcome", ["outcome"])
BACKPRESSURE = Counter(
    "flickrhub_gateway_backpressure_total",
    "Submissions refused by backpressure: client_pending (the client's open-jobs cap) or buffer_full",
    ["reason"],
)
STATUS_READS = Counter(
    "flickrhub_gateway_job_status_reads_total",
    "Job status reads (GetJob, WatchJob, the legacy status route) by where they were answered from: "
    "redis (the hot copy) or mongo",
    ["source"],
)
