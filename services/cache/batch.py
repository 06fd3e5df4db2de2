"""Batched Gets and Puts (Exchange, ExchangeStream): one Redis round trip for the whole batch.

Each operation is answered as its single RPC would answer it: a Get whose store is
down is a miss, a Put the store could not write is UNAVAILABLE, a bad key is
INVALID_ARGUMENT (in that operation's result; the others go on). The per-request
bookkeeping (counters, histograms) is added up once per batch.

Tracing: the batch call itself is not traced (it belongs to no single job). Each
operation that names a sampled trace gets a server span (`flickrhub.cache.get` /
`flickrhub.cache.put`) whose parent is the caller's span for that operation, timed
as the batch, so every job's trace still shows its cache step in the service.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import grpc
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from redis.exceptions import RedisError

from cache import metrics
from cache.store import CacheStore, GetOp, Hit, PutOp, method_label
from cache.validation import MAX_VALUE_BYTES, key_violations, method_class
from common import telemetry
from common.errors import FieldViolation
from flickrhub.v1 import cache_pb2

# Operations in one batch at most (a caller sends more as several batches).
MAX_OPS = 256

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def _refusal(bad: list[FieldViolation], what: str) -> str:
    return f"invalid {what}: " + ", ".join(v.field for v in bad)


def _refuse(result: cache_pb2.CacheOpResult, code: int, message: str) -> None:
    result.error.code = code
    result.error.message = message


class _Batch:
    """One batch's results and what is left to ask Redis, by operation index."""

    __slots__ = ("get_at", "gets", "lookups", "outcomes", "put_at", "puts", "requests", "response", "results")

    def __init__(self, ops: Sequence[cache_pb2.CacheOp]) -> None:
        self.response = cache_pb2.CacheBatchResponse()
        self.results = [self.response.results.add(id=op.id) for op in ops]
        self.outcomes = [""] * len(ops)
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (op, method class, outcome)
        self.lookups: Counter[tuple[str, str]] = Counter()  # (method label, outcome)
        self.get_at: list[int] = []
        self.gets: list[GetOp] = []
        self.put_at: list[int] = []
        self.puts: list[PutOp] = []

    def refuse(self, i: int, code: int, message: str, outcome: str = "invalid") -> None:
        _refuse(self.results[i], code, message)
        self.outcomes[i] = outcome


class BatchHandler:
    """Runs one CacheBatchRequest against the store; `rpc` labels the batch-size histogram."""

    def __init__(self, store: CacheStore) -> None:
        self._store = store
        self._tracer = telemetry.tracer()
        self._get_seconds = metrics.OP_SECONDS.labels("get")
        self._put_seconds = metrics.OP_SECONDS.labels("put")

    async def run(self, ops: Sequence[cache_pb2.CacheOp], rpc: str) -> cache_pb2.CacheBatchResponse:
        """Every operation's result, in the request's order."""
        started_ns = time.time_ns()
        started = time.perf_counter()
        batch = _Batch(ops)
        for i, op in enumerate(ops):
            self._sort(batch, i, op)
        if batch.gets or batch.puts:
            found, stored = await self._store.exchange(batch.gets, batch.puts)
            self._answer(batch, found, stored)
        self._observe(batch, rpc, time.perf_counter() - started)
        self._spans(ops, batch.outcomes, started_ns)
        return batch.response

    def _sort(self, batch: _Batch, i: int, op: cache_pb2.CacheOp) -> None:
        """Answer what needs no Redis (refusals, writes' Gets, Puts with no TTL); queue the rest."""
        result = batch.results[i]
        kind = op.WhichOneof("op")
        if kind == "get":
            key = op.get.key
            if bad := key_violations(key):
                batch.refuse(i, _INVALID, _refusal(bad, "CacheGetRequest"))
            elif method_class(key.method) == "write":
                self._store.count("misses", key.method)  # never stored, so no need to ask Redis
                result.get.SetInParent()
                batch.outcomes[i] = "skipped"
                batch.requests["get", "write", "skipped"] += 1
                batch.lookups[method_label(key.method), "miss"] += 1
            else:
                batch.get_at.append(i)
                batch.gets.append(GetOp(key.method, key.params, key.token_id_hash))
        elif kind == "put":
            put = op.put
            bad = key_violations(put.key)
            if len(put.value) > MAX_VALUE_BYTES:
                bad.append(FieldViolation("value", f"at most {MAX_VALUE_BYTES} bytes"))
            if put.ttl_seconds < 0:
                bad.append(FieldViolation("ttl_seconds", "0 (the method's default) or positive"))
            if bad:
                batch.refuse(i, _INVALID, _refusal(bad, "CachePutRequest"))
                return
            key = put.key
            ttl = self._store.ttl_for(key.method, put.ttl_seconds)
            if ttl == 0:
                result.put.SetInParent()
                batch.outcomes[i] = "skipped"
                batch.requests["put", method_class(key.method), "skipped"] += 1
            else:
                batch.put_at.append(i)
                batch.puts.append(PutOp(key.method, key.params, key.token_id_hash, put.value, ttl))
        else:
            batch.refuse(i, _INVALID, "invalid CacheOp: get or put required")

    def _answer(
        self, batch: _Batch, found: Sequence[Hit | RedisError | None], stored: Sequence[RedisError | None]
    ) -> None:
        """Fill in the results of what went to Redis."""
        for i, g, hit in zip(batch.get_at, batch.gets, found, strict=True):
            outcome = batch.outcomes[i] = self._answer_get(batch.results[i], hit)
            batch.requests["get", method_class(g.method), outcome] += 1
            batch.lookups[method_label(g.method), outcome] += 1
        for i, p, error in zip(batch.put_at, batch.puts, stored, strict=True):
            if error is None:
                batch.outcomes[i] = "stored"
                batch.results[i].put.stored, batch.results[i].put.ttl_seconds = True, p.ttl_s
            else:
                batch.refuse(i, _UNAVAILABLE, "cache store unavailable: nothing was stored", "error")
            batch.requests["put", method_class(p.method), batch.outcomes[i]] += 1

    def _observe(self, batch: _Batch, rpc: str, elapsed: float) -> None:
        """The batch's bookkeeping, added up once: latencies, request and lookup counts, its size."""
        for _ in batch.gets:
            self._get_seconds.observe(elapsed)
        for _ in batch.puts:
            self._put_seconds.observe(elapsed)
        for labels, n in batch.requests.items():
            metrics.REQUESTS.labels(*labels).inc(n)
        for (method, outcome), n in batch.lookups.items():
            metrics.LOOKUPS.labels(method, outcome).inc(n)
        metrics.BATCH_OPS.labels(rpc).observe(len(batch.results))

    @staticmethod
    def _answer_get(result: cache_pb2.CacheOpResult, hit: Hit | RedisError | None) -> str:
        result.get.SetInParent()
        if isinstance(hit, RedisError):
            return "error"  # answered as a miss, like the single Get
        if hit is None:
            return "miss"
        result.get.hit, result.get.value, result.get.ttl_seconds = True, hit.value, hit.ttl_s
        return "hit"

    def _spans(self, ops: Sequence[cache_pb2.CacheOp], outcomes: list[str], started_ns: int) -> None:
        """One server span per traced operation, a child of the caller's span for it."""
        ended_ns = time.time_ns()
        for op, outcome in zip(ops, outcomes, strict=True):
            if not op.sampled or len(op.trace_id) != 16:
                continue
            trace_id = int.from_bytes(op.trace_id)
            caller = SpanContext(trace_id, op.span_id, is_remote=True, trace_flags=_SAMPLED)
            is_get = op.WhichOneof("op") != "put"
            span = self._tracer.start_span(
                telemetry.SPAN_CACHE_SERVE_GET if is_get else telemetry.SPAN_CACHE_SERVE_PUT,
                context=trace.set_span_in_context(NonRecordingSpan(caller)),
                kind=SpanKind.SERVER,
                start_time=started_ns,
                # Few attributes: each costs ~2 µs per span, and there are two spans per job.
                attributes={
                    telemetry.ATTR_METHOD: op.get.key.method if is_get else op.put.key.method,
                    telemetry.ATTR_CACHE_OUTCOME: outcome,
                    telemetry.ATTR_CACHE_BATCH: len(ops),
                },
            )
            if outcome in ("invalid", "error"):
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end(end_time=ended_ns)
