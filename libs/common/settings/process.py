"""The process: deployment mode, logging, shutdown, readiness, event loop and tracing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

ENVIRONMENTS = ("demo", "production")
EVENT_LOOPS = ("uvloop", "asyncio")
TRACES_EXPORTERS = ("otlp", "console", "none")


@dataclass(frozen=True)
class ProcessSettings:
    """How every FlickrHub process runs."""

    environment: str = setting(
        "FLICKRHUB_ENV",
        "demo",
        "`demo` allows built-in demo keys; `production` refuses to start without real ones.",
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "Python log level of every service (JSON lines on stderr).")
    shutdown_grace_s: float = setting(
        "SHUTDOWN_GRACE_S", 20.0, "Seconds a service may drain in-flight work after SIGTERM."
    )
    readiness_interval_s: float = setting(
        "READINESS_INTERVAL_S", 5.0, "How often services probe Redis/MongoDB for their gRPC readiness status."
    )
    event_loop: str = setting(
        "EVENT_LOOP",
        "uvloop",
        "`uvloop` or `asyncio`: the event loop every service runs on (uvloop costs less per loop turn).",
    )
    # The OpenTelemetry SDK also reads the standard OTEL_* variables itself.
    otel_traces_exporter: str = setting(
        "OTEL_TRACES_EXPORTER",
        "none",
        "`otlp` (OTEL_EXPORTER_OTLP_ENDPOINT), `console` or `none` (spans are then not recorded at all; "
        "trace ids still are). While exporting, the standard OTEL_TRACES_SAMPLER decides.",
    )


def check_process(s: Settings) -> None:
    """FLICKRHUB_ENV, EVENT_LOOP and OTEL_TRACES_EXPORTER name one of their choices."""
    for name, value, choices in (
        ("FLICKRHUB_ENV", s.environment, ENVIRONMENTS),
        ("EVENT_LOOP", s.event_loop, EVENT_LOOPS),
        ("OTEL_TRACES_EXPORTER", s.otel_traces_exporter, TRACES_EXPORTERS),
    ):
        if value not in choices:
            raise SettingsError(f"{name}: expected {_either(choices)}, got {value!r}")


def _either(choices: tuple[str, ...]) -> str:
    """`a, b or c`."""
    return ", ".join(choices[:-1]) + " or " + choices[-1]
