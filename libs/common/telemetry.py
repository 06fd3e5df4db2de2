"""Tracing setup and the one vocabulary of span and attribute names.

The SDK is configured here and nowhere else; exporters come from the standard
OTEL_* variables (through Settings). The W3C trace context rides inside every
stream entry (`inject_fields` / `extract_fields`) so one trace follows a job
from the edge through gateway, mover, worker and cache to the Flickr call.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default

TRACER_NAME = "flickrhub"

# Span names
SPAN_ENQUEUE = "flickrhub.job.enqueue"
SPAN_MOVE = "flickrhub.job.move"
SPAN_EXECUTE = "flickrhub.job.execute"
SPAN_FLICKR_CALL = "flickrhub.flickr.call"
SPAN_CACHE_LOOKUP = "flickrhub.cache.lookup"
SPAN_CACHE_STORE = "flickrhub.cache.store"
# The cache service's side of one batched Get or Put (a child of the worker's lookup/store span).
SPAN_CACHE_SERVE_GET = "flickrhub.cache.get"
SPAN_CACHE_SERVE_PUT = "flickrhub.cache.put"
SPAN_WEBHOOK = "flickrhub.webhook.deliver"
SPAN_RECOVER = "flickrhub.job.recover"

# Attribute names
ATTR_JOB_ID = "flickrhub.job_id"
ATTR_USER_ID = "flickrhub.user_id"
ATTR_METHOD = "flickrhub.flickr_method"
ATTR_TARGET = "flickrhub.target"
ATTR_TOKEN = "flickrhub.token_id_hash"
ATTR_ATTEMPT = "flickrhub.attempt"
ATTR_STATE = "flickrhub.state"
ATTR_FROM_CACHE = "flickrhub.from_cache"
ATTR_FLICKR_CODE = "flickrhub.flickr_code"
ATTR_CACHE_HIT = "flickrhub.cache.hit"
ATTR_CACHE_OUTCOME = "flickrhub.cache.outcome"
ATTR_CACHE_BATCH = "flickrhub.cache.batch_size"
ATTR_STREAM = "messaging.destination.name"
ATTR_MESSAGE_ID = "messaging.message.id"
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_GRPC_STATUS = "rpc.grpc.status_code"
ATTR_HTTP_METHOD = "http.request.method"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_URL = "url.full"

_provider: TracerProvider | None = None


class WhileExporting(Sampler):
    """Records spans only once something exports them; until then every span is dropped at once.

    A span nobody exports still cost ~30-60 µs to build, fill and end (about ten per job, ~10% of
    a service's CPU in a profile of the pipeline). Dropped spans keep their trace ids, so a job's
    `trace_id`, log correlation and the context carried in stream entries are unchanged. While
    exporting, the sampler the standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG variables
    name decides (parent-based always-on by default). A process that exports nothing marks the
    traces it starts as not sampled, so run every service with the same exporter settings.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.exporting = False

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, *args: Any, **kw: Any
    ) -> SamplingResult:
        if not self.exporting:
            return _DROP
        return self.inner.should_sample(parent_context, trace_id, name, *args, **kw)

    def get_description(self) -> str:
        return f"WhileExporting{{{self.inner.get_description()}}}"


_DROP = SamplingResult(Decision.DROP)
_sampler = WhileExporting(_get_from_env_or_default())


def setup_tracing(service: str, exporter: str = "none", extra: SpanExporter | None = None) -> TracerProvider:
    """Install the process's tracer provider once; later calls only add `extra`."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(
            sampler=_sampler, resource=Resource.create({"service.name": f"flickrhub-{service}"})
        )
        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _sampler.exporting = True
        elif exporter == "console":
            _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            _sampler.exporting = True
        trace.set_tracer_provider(_provider)
    if extra is not None:
        _provider.add_span_processor(SimpleSpanProcessor(extra))
        _sampler.exporting = True
    return _provider


def shutdown_tracing() -> None:
    """Flush spans still buffered (called on graceful shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=2000)


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """FlickrHub's tracer (one object per process: `get_tracer` costs ~5 µs a call)."""
    global _tracer
    if _tracer is None:
        # Before setup_tracing this is a proxy that follows the provider installed later.
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span of the job's path, as `tracer().start_as_current_span` makes it, while something
    exports spans. Until then none is made (it would be dropped: ~15 µs for nothing): the body runs
    in `context` (or the current one) and gets its span, whose trace id and span id carry on into
    what the body injects (stream entries, HTTP headers). Roots (the gateway's and the edge's
    server spans) are always made, so every request still gets a trace id.
    """
    if _sampler.exporting:
        with tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes) as made:
            yield made
        return
    if context is None:
        yield trace.get_current_span()
        return
    token = otel_context.attach(context)
    try:
        yield trace.get_current_span()
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def server_span(
    name: str, context: otel_context.Context | None, attributes: Callable[[], Mapping[str, Any]]
) -> Iterator[trace.Span]:
    """A request's server span, a child of the caller's `context` when it sent one.

    While nothing exports spans it is not built (it would be dropped): the caller's span goes on
    being current or, for a call without one, a span context with fresh random ids that records
    nothing, so the request still has a trace id (answered, stored with its jobs, carried on).
    """
    if _sampler.exporting:
        with tracer().start_as_current_span(
            name,
            context=context,
            kind=trace.SpanKind.SERVER,
            attributes=attributes(),
            record_exception=False,
            set_status_on_exception=False,
        ) as made:
            yield made
        return
    current = trace.get_current_span(context)
    if not current.get_span_context().is_valid:
        fresh = trace.SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False)
        current = trace.NonRecordingSpan(fresh)
    token = otel_context.attach(trace.set_span_in_context(current, context))
    try:
        yield current
    finally:
        otel_context.detach(token)


def inject_fields(fields: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (traceparent, tracestate) into a stream entry."""
    propagate.inject(fields)
    return fields


def extract_fields(fields: Mapping[str, str]) -> otel_context.Context:
    """The trace context carried by a stream entry."""
    return propagate.extract(dict(fields))


def current_trace_id() -> str:
    """Hex trace id of the current span, or an empty string outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
