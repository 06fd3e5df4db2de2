"""The suite as real processes on free ports, for end-to-end tests."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Ports, ProcessStack

FAST_ENV = {
    "WORKER_VISIBILITY_TIMEOUT_S": "6",
    "WORKER_BACKOFF_BASE_S": "0.05",
    "WORKER_BACKOFF_MAX_S": "0.2",
    "MOVER_CLAIM_IDLE_S": "2",
    "SHUTDOWN_GRACE_S": "3",
    "FLICKR_BUDGET_PER_HOUR": "100000000",
    # The cheapest cost allowed: the stack hashes its seeded keys, and each gateway checks them once.
    "API_KEY_BCRYPT_ROUNDS": "10",
    "LOG_LEVEL": "INFO",
    # Test webhook receivers listen on 127.0.0.1, which webhooks may only reach when allow-listed.
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
}


@contextlib.contextmanager
def process_stack(
    workers: int = 1, movers: int = 1, env: dict[str, str] | None = None
) -> Iterator[ProcessStack]:
    """Start a whole stack in a temporary folder (`env` adds to FAST_ENV); on failure show the logs."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-e2e-") as tmp:
        stack = ProcessStack(
            Path(tmp), Ports.free(), workers=workers, movers=movers, env={**FAST_ENV, **(env or {})}
        )
        try:
            stack.start()
            yield stack
        except BaseException:
            for proc in stack.procs.values():
                print(f"--- {proc.name} (alive={proc.alive}) ---\n{proc.tail(15)}")
            raise
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[ProcessStack]:
    with process_stack(workers=2) as running:
        yield running
