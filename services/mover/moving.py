"""One entry's way from its token queue to a work stream: checked, traced, its fields passed on as read."""

from __future__ import annotations

from opentelemetry import propagate, trace

from common import keys, telemetry
from common.jobs import JobEntry

_TRACE_FIELDS = ("traceparent", "tracestate")


def work_entry(fields: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """(work stream, job id, fields to append) for one token-queue entry; ValueError if malformed.

    The entry is parsed only to check it (a malformed one goes to the dead letters, as the worker
    would send it), not rebuilt: its fields go on as they were read, with the trace context of a
    new `flickrhub.job.move` span in place of the gateway's.
    """
    entry = JobEntry.from_fields(fields)
    stream = keys.work_stream(entry.target)
    span = telemetry.tracer().start_span(
        telemetry.SPAN_MOVE,
        context=telemetry.extract_fields(entry.trace),
        kind=trace.SpanKind.CONSUMER,
        attributes={telemetry.ATTR_JOB_ID: entry.job_id, telemetry.ATTR_STREAM: stream},
    )
    out = {k: v for k, v in fields.items() if k not in _TRACE_FIELDS}
    propagate.inject(out, context=trace.set_span_in_context(span))
    span.end()
    return stream, entry.job_id, out
