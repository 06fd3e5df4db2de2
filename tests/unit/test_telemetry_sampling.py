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


def test_a_path_span_while_nothing_exports_is_the_current_span_or_the_given_context() -> None:
    from opentelemetry import trace

    from common import telemetry

    exporting = telemetry._sampler.exporting
    telemetry._sampler.exporting = False
    try:
        provider = TracerProvider(sampler=telemetry._sampler)
        with provider.get_tracer("t").start_as_current_span("root") as root:
            with telemetry.span("child") as child:
                assert child is root  # no span made: the root's ids carry on
            parent = propagate.extract(
                {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
            )
            with telemetry.span("consumer", context=parent) as consumer:
                ctx = consumer.get_span_context()
                assert format(ctx.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
                assert trace.get_current_span() is consumer
            assert trace.get_current_span() is root  # the given context is detached again
    finally:
        telemetry._sampler.exporting = exporting


def test_a_path_span_while_exporting_is_a_real_child() -> None:
    from common import telemetry

    exporting = telemetry._sampler.exporting
    telemetry._sampler.exporting = True
    try:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=telemetry._sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        old, telemetry._tracer = telemetry._tracer, provider.get_tracer("t")
        try:
            with telemetry._tracer.start_as_current_span("root") as root, telemetry.span("child") as child:
                assert child is not root and child.is_recording()
                assert child.get_span_context().trace_id == root.get_span_context().trace_id
        finally:
            telemetry._tracer = old
        assert [s.name for s in exporter.get_finished_spans()] == ["child", "root"]
    finally:
        telemetry._sampler.exporting = exporting


def test_a_server_span_while_nothing_exports_still_gives_the_request_a_trace_id() -> None:
    from opentelemetry import trace

    from common import telemetry

    exporting = telemetry._sampler.exporting
    telemetry._sampler.exporting = False
    try:
        built: list[str] = []

        def attributes() -> dict[str, str]:
            built.append("attrs")
            return {}

        with telemetry.server_span("/svc/M", None, attributes) as span:
            ctx = span.get_span_context()
            assert ctx.is_valid and not ctx.trace_flags.sampled and not span.is_recording()
            assert telemetry.current_trace_id() == format(ctx.trace_id, "032x")
        assert not trace.get_current_span().get_span_context().is_valid
        with telemetry.server_span("/svc/M", None, attributes) as again:
            assert again.get_span_context().trace_id != ctx.trace_id  # the next request: new ids
        parent = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        with telemetry.server_span("/svc/M", parent, dict):
            assert telemetry.current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
        assert built == []  # the attributes are never built for a span that is not made
    finally:
        telemetry._sampler.exporting = exporting
