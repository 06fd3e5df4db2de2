"""Failpoints: named places where a chaos test makes a process die, to prove a crash there is safe.

Armed through `FAILPOINTS` (common.settings), e.g. `worker.recorded=exit`: when the worker
passes that place it ends at once with `os._exit(137)`, like SIGKILL (no cleanup, no `finally`,
no flush), so the test sees exactly the state a crash there leaves behind. `exit-after:<ms>`
dies that long after passing the point, wherever the process then is (with a slow Flickr:
while the call is in flight). A chaos-testing aid only: production refuses to start with any
point armed. An unarmed point costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

# The write path of one job entry (services/worker/executor.py), in the order a run passes them.
WORKER_CLAIMED: Final = "worker.claimed"  # the claim recorded the attempt; Flickr not called yet
WORKER_ANSWERED: Final = "worker.answered"  # Flickr answered; nothing recorded yet
WORKER_RECORDED: Final = "worker.recorded"  # outcome in MongoDB; not announced, no webhook queued
# Announced, webhook queued; a retry's entry not acked yet (a final outcome's went in the same pipeline).
WORKER_ANNOUNCED: Final = "worker.announced"
WORKER_ACKED: Final = "worker.acked"  # the entry acknowledged: the run is over
POINTS: Final = (WORKER_CLAIMED, WORKER_ANSWERED, WORKER_RECORDED, WORKER_ANNOUNCED, WORKER_ACKED)

EXIT_CODE: Final = 137  # what a shell reports for a SIGKILLed process


def parse(raw: str) -> dict[str, float]:
    """`point=exit|exit-after:<ms>,…` as point → seconds before dying (0: at once)."""
    armed: dict[str, float] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        point, _, action = (s.strip() for s in part.partition("="))
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r} (known: {', '.join(POINTS)})")
        if point in armed:
            raise ValueError(f"{point!r} is given twice")
        if action == "exit":
            armed[point] = 0.0
        elif action.startswith("exit-after:") and action.removeprefix("exit-after:").isdigit():
            armed[point] = int(action.removeprefix("exit-after:")) / 1000
        else:
            raise ValueError(f"{point}: expected exit or exit-after:<ms>, got {action!r}")
    return armed


class Failpoints:
    """The points armed in one process; `hit` is a no-op for the others."""

    def __init__(self, armed: Mapping[str, float] | None = None) -> None:
        self._armed = dict(armed or {})
        if self._armed:
            log.warning("failpoints armed (chaos testing only): %s", sorted(self._armed))

    @classmethod
    def from_config(cls, raw: str) -> Failpoints:
        """Failpoints from a `FAILPOINTS` value (already validated with the settings)."""
        return cls(parse(raw))

    def hit(self, point: str) -> None:
        """Die here (or a little later) when `point` is armed; otherwise return at once."""
        delay = self._armed.get(point)
        if delay is None:
            return
        # The log handler flushes each line, so the reason survives os._exit.
        log.warning("failpoint %s hit: exiting with %d in %.3f s", point, EXIT_CODE, delay)
        if delay <= 0:
            os._exit(EXIT_CODE)
        # A thread, not the event loop: the process dies on time even if the loop is busy.
        timer = threading.Timer(delay, os._exit, (EXIT_CODE,))
        timer.daemon = True  # a clean shutdown before the timer fires is not held up by it
        timer.start()
        del self._armed[point]  # one death is enough; later passes must not stack timers
