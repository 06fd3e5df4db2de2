"""The mover's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MOVED = Counter("flickrhub_mover_moved_total", "Entries moved from token queues to work streams", ["target"])
CLAIMED = Counter("flickrhub_mover_claimed_total", "Entries claimed back from dead movers")
REQUEUED = Counter("flickrhub_mover_retries_requeued_total", "Due retries put back into token queues")
MALFORMED = Counter("flickrhub_mover_malformed_total", "Entries that could not be parsed (sent to the DLQ)")
QUEUE_DEPTH = Gauge("flickrhub_queue_depth", "Entries waiting in a queue", ["queue"])
PAUSED = Gauge("flickrhub_mover_paused", "1 while a circuit breaker pauses moving")
BUDGET_WAITS = Counter("flickrhub_mover_budget_waits_total", "Rounds that found the Flickr budget spent")
WORK_FULL = Counter(
    "flickrhub_mover_work_full_total", "Rounds that found the work streams' undelivered backlog full"
)
IN_FLIGHT_FULL = Counter(
    "flickrhub_mover_in_flight_full_total",
    "Rounds in which every queued token had MOVER_TOKEN_IN_FLIGHT entries in the work streams",
)
ACTIVE_TOKENS = Gauge("flickrhub_mover_active_tokens", "Tokens with queued work seen in the last round")
ROUND_SECONDS = Histogram(
    "flickrhub_mover_round_seconds",
    "Duration of one round over the active tokens",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2),
)
RECOVERED = Counter(
    "flickrhub_recovery_reenqueued_total",
    "Live jobs MongoDB holds that Redis had lost, re-enqueued by a recovery sweep",
    ["status"],
)
RECOVERY_SWEEPS = Counter("flickrhub_recovery_sweeps_total", "Recovery sweeps run", ["kind"])
ORPHAN_BLOBS = Counter(
    "flickrhub_recovery_orphan_blobs_removed_total",
    "Upload blobs no live job held (left by a gateway killed mid-upload), removed by a recovery sweep",
)
