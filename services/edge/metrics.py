"""The edge's request metrics: one count and one latency per route, for JSON and upload routes alike."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter("flickrhub_edge_requests_total", "REST requests answered by the edge.", ["route", "code"])
LATENCY = Histogram("flickrhub_edge_request_seconds", "Time to answer a REST request.", ["route"])


class RequestMetrics:
    """Records answered requests; each (route, status) child is looked up once, then kept."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int], Any] = {}
        self._histograms: dict[str, Any] = {}

    def observe(self, route: str, http_status: int, started: float) -> None:
        """Count an answer of `route` and its time since `started` (a `time.perf_counter()`)."""
        key = (route, http_status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(route=route, code=str(http_status))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = LATENCY.labels(route=route)
        histogram.observe(time.perf_counter() - started)
