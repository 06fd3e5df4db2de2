"""The FlickrHub stack the benchmarks measure: every process `make run` starts, on free ports.

Caps meant for production clients are lifted (one admin key submits every job of a run,
and ingress runs without workers), logs are kept at WARNING, and the workers' Prometheus
endpoints are on so a run can tell when its jobs have ended without asking the gateway.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from common import keys
from devstack import seed
from devstack.procs import Managed, free_port
from devstack.stack import Ports, ProcessStack

BENCH_ENV = {
    "LOG_LEVEL": "WARNING",
    "CLIENT_MAX_PENDING_JOBS": "100000000",
    "MAX_BUFFERED_JOBS": "100000000",
}
_DONE = re.compile(r'^flickrhub_worker_jobs_total\{outcome="(\w+)"\} ([0-9.e+]+)$', re.M)
FINAL_OUTCOMES = ("completed", "failed", "expired", "write_unknown")
STORES = {
    "redis": "queue Redis",
    "cache-redis": "cache Redis",
    "mongo": "MongoDB stand-in",
    "sandbox": "Flickr",
}


@contextmanager
def running(workers: int = 2, movers: int = 1, env: dict[str, str] | None = None) -> Iterator[ProcessStack]:
    """A started stack in a temporary folder, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-") as tmp:
        ports = Ports.free()
        ports.metrics = {"worker": free_port()} if workers else {}
        if workers > 1:  # replica i serves metrics on base + i
            base = ports.metrics["worker"]
            while any(not _free(base + i) for i in range(workers)):
                base = free_port()
            ports.metrics["worker"] = base
        stack = ProcessStack(
            Path(tmp), ports, workers=workers, movers=movers, env={**BENCH_ENV, **(env or {})}
        )
        try:
            stack.start()
            wait_workers(stack)
            yield stack
        finally:
            stack.stop()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def metrics_ports(stack: ProcessStack) -> list[int]:
    base = stack.ports.metrics.get("worker", -1)
    return [base + i for i in range(len(stack.workers))] if base > 0 else []


def wait_workers(stack: ProcessStack, timeout: float = 60.0) -> None:
    """Block until every worker answers on its metrics port (they start without waiting)."""
    deadline = time.monotonic() + timeout
    for port in metrics_ports(stack):
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker metrics on {port} never answered") from None
                time.sleep(0.2)


def pids(stack: ProcessStack) -> dict[str, int]:
    """The pid of every running process of the stack by name (mongo for SecantusDB)."""
    out: dict[str, int] = {}
    for name, proc in stack.procs.items():
        if isinstance(proc, Managed) and proc.proc is not None and proc.alive:
            out[name] = proc.proc.pid
    return out


def finished(stack: ProcessStack) -> int:
    """Jobs the workers counted as ended (flickrhub_worker_jobs_total, final outcomes)."""
    total = 0.0
    seen = False
    for port in metrics_ports(stack):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for outcome, value in _DONE.findall(text):
            seen = True
            if outcome in FINAL_OUTCOMES:
                total += float(value)
    if not seen and total == 0:
        return 0
    return int(total)


# ZCARDs wait_finished sent so far: bench.cost takes them out of the queue Redis's command counts.
polls = 0


def wait_finished(stack: ProcessStack, expect: int, timeout: float = 900.0, poll_s: float = 0.05) -> int:
    """Wait until the workers counted `expect` ended jobs; the count reached.

    While jobs are open it asks the queue Redis how many are (the global backpressure set, which a
    job leaves with its outcome), not the workers: a metrics scrape costs a worker about a
    millisecond of CPU, which would count against the jobs being measured. The workers' counters
    are read once the set is empty (and until they show `expect`).
    """
    global polls
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        while True:
            polls += 1
            if not client.zcard(keys.OPEN_JOBS):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still open after {timeout}s")
            time.sleep(poll_s)
    finally:
        client.close()
    done = finished(stack)
    while done < expect:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {expect} jobs ended within {timeout}s")
        time.sleep(poll_s)
        done = finished(stack)
    return done


def seed_users(stack: ProcessStack, users: list[str]) -> None:
    """Give every user a Flickr token of its own (distinct tokens: distinct queues)."""

    async def seed_all() -> None:
        for user in users:
            await seed.seed_demo_token(stack.settings, user, distinct=True)

    asyncio.run(seed_all())


def admin_key(stack: ProcessStack) -> str:
    assert stack.keys is not None
    return stack.keys.admin_key
