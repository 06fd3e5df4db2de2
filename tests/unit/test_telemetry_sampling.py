"""Spans are recorded only while something exports them; trace ids exist either way."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased

from common.telemetry import WhileExporting


def test_nothing_exports_so_spans_are_dropped_but_keep_their_trace_ids() -> None:
    sampler = WhileExporting(ALWAYS_ON)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("dropped") as span:
        assert not span.is_recording()
        ctx = span.get_span_context()
        assert ctx.is_valid and not ctx.trace_flags.sampled
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        assert format(ctx.trace_id, "032x") in carrier["traceparent"]
    sampler.exporting = True
    with tracer.start_as_current_span("kept") as span:
        assert span.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["kept"]


def test_while_exporting_the_configured_sampler_decides() -> None:
    sampler = WhileExporting(TraceIdRatioBased(0.0))
    sampler.exporting = True
    tracer = TracerProvider(sampler=sampler).get_tracer("t")
    assert not tracer.start_span("never").is_recording()
    assert "TraceIdRatioBased" in sampler.get_description()
