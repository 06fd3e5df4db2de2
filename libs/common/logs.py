"""Structured JSON logs with the job id and trace id of the current context, never a secret."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("flickrhub_job_id", default=None)

# Values of these keys are replaced wherever they appear in a log record's text.
_SECRET_PATTERN = re.compile(
    r"(?i)(oauth_token_secret|oauth_signature|token_secret|consumer_secret|callback_secret|api_secret|"
    r"authorization|password|secret)([\"']?\s*[=:]\s*[\"']?)([^\s\"'&,}]+)"
)


def redact(text: str) -> str:
    """Mask anything that looks like `secret=value` in free text."""
    return _SECRET_PATTERN.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        job_id = job_id_var.get()
        if job_id and not hasattr(record, "job_id"):
            record.job_id = job_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        record.msg = redact(str(record.msg))
        if isinstance(record.args, Mapping):  # log.info("%(name)s", {...}): keep it a mapping
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr for `service`; safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_extra(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call, with secret-looking values dropped."""
    return {k: v for k, v in fields.items() if "secret" not in k and k != "token"}
