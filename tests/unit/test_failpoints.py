"""Failpoints: parsed and checked with the settings, and a hit point ends the process like SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from common import failpoints
from common.settings import Settings, SettingsError


def test_failpoints_parse_points_and_actions() -> None:
    armed = failpoints.parse(" worker.recorded=exit , worker.claimed=exit-after:250,")
    assert armed == {"worker.recorded": 0.0, "worker.claimed": 0.25}
    assert failpoints.parse("") == {}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("worker.nowhere=exit", "unknown failpoint"),
        ("worker.acked", "expected exit"),
        ("worker.acked=crash", "expected exit"),
        ("worker.acked=exit-after:soon", "expected exit"),
        ("worker.acked=exit,worker.acked=exit", "given twice"),
    ],
)
def test_a_bad_failpoint_fails_the_settings_with_its_variable(raw: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=f"FAILPOINTS: .*{problem}"):
        Settings.from_env({"FAILPOINTS": raw})


def test_failpoints_stay_empty_in_production() -> None:
    assert Settings.from_env({"FAILPOINTS": "worker.acked=exit"}).failpoints == "worker.acked=exit"
    with pytest.raises(SettingsError, match="FAILPOINTS"):
        Settings.from_env({"FAILPOINTS": "worker.acked=exit", "FLICKRHUB_ENV": "production"})


def _run(armed: str, *, sleep_s: float = 0.0) -> subprocess.CompletedProcess[str]:
    code = (
        "import time\n"
        "from common import failpoints\n"
        f"points = failpoints.Failpoints.from_config({armed!r})\n"
        "points.hit('worker.claimed')\n"
        "print('passed', flush=True)\n"
        f"time.sleep({sleep_s})\n"
        "try:\n"
        "    points.hit('worker.recorded')\n"
        "finally:\n"
        "    print('finally ran', flush=True)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_an_armed_point_ends_the_process_at_once_without_cleanup() -> None:
    done = _run("worker.recorded=exit")
    assert done.returncode == failpoints.EXIT_CODE
    assert done.stdout.split() == ["passed"]  # the `finally` block never ran


def test_exit_after_dies_later_wherever_the_process_is() -> None:
    started = time.monotonic()
    done = _run("worker.claimed=exit-after:200", sleep_s=5)
    assert done.returncode == failpoints.EXIT_CODE
    assert done.stdout.split() == ["passed"]  # it went on past the point, then died in its sleep
    assert time.monotonic() - started < 4


def test_unarmed_points_do_nothing() -> None:
    done = _run("")
    assert done.returncode == 0 and "finally ran" in done.stdout
