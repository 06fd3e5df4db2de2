"""CPU and memory of processes, read from their own kernel counters (/proc/<pid>/stat, statm).

The machine is shared: wall time says little, but the CPU a process used is its own.
`CpuWindow` reads every watched process before and after a measured window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e6


def group(name: str) -> str:
    """Replicas are summed: worker-0 and worker-1 are "worker"."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


@dataclass
class CpuWindow:
    """CPU seconds of named processes over a window (start() … stop())."""

    pids: Mapping[str, int]
    before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> CpuWindow:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds each process used since start()."""
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used

    def by_group(self) -> dict[str, float]:
        """CPU seconds summed over replicas (see `group`)."""
        out: dict[str, float] = {}
        for name, seconds in self.used.items():
            out[group(name)] = out.get(group(name), 0.0) + seconds
        return out


def per_unit_ms(seconds: Mapping[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per unit of work (job, request) by name."""
    return {name: round(s * 1000 / max(units, 1), 4) for name, s in sorted(seconds.items())}
