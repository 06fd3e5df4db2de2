"""What every asyncio task is waiting for: printed when a test or its teardown hangs."""

from __future__ import annotations

import asyncio
import sys


def dump_tasks(title: str) -> None:
    """Print every task's await chain to stderr, a test's own coroutine first."""
    tasks = sorted(
        asyncio.all_tasks(), key=lambda t: not getattr(t.get_coro(), "__qualname__", "").startswith("test_")
    )
    print(f"--- {title}; {len(tasks)} asyncio tasks ---", file=sys.stderr)
    for task in tasks[:80]:
        print(f"task {task.get_name()}: {await_chain(task)}", file=sys.stderr)


def await_chain(task: asyncio.Task[object]) -> str:
    """Where a task waits: each coroutine it awaits, as name@file:line, outermost first."""
    steps: list[str] = []
    coro: object = task.get_coro()
    while coro is not None and len(steps) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        name = getattr(coro, "__qualname__", type(coro).__name__)
        where = f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}" if frame else "?"
        steps.append(f"{name}@{where}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return " -> ".join(steps) or repr(task)
