"""End-to-end baselines on the same kind of Redis as FlickrHub's queue (queue role: AOF, noeviction).

* arq (bench/arq_job.py) from a virtual environment of its own (arq pins redis-py < 6):
  created on first use under bench/.arq-venv (git-ignored), or ARQ_VENV;
* the floor (bench/floor.py): a bare redis-py Streams pipeline in batches.

Each runs in its own process on a fresh Redis; the figures are that process's own CPU per
job (enqueue + execution; Redis excluded, and reported apart from /proc of redis-server),
end-to-end jobs/s (jobs / (enqueue + execution seconds), the phases one after the other),
and Redis commands per job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import counters
from bench.procstat import cpu_seconds
from devstack.stores import redis_server

HERE = Path(__file__).resolve().parent
ARQ_SPEC = "arq==0.28.*"


def arq_python() -> Path:
    """The arq virtual environment's interpreter, created (python -m venv + pip install arq) if missing."""
    venv = Path(os.environ.get("ARQ_VENV", HERE / ".arq-venv"))
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", ARQ_SPEC], check=True)
        marker.write_text(ARQ_SPEC + "\n")
    return python


def _run(argv: list[str], jobs: int) -> dict[str, Any]:
    """Run `argv` + [redis port] against a fresh queue-role Redis; its JSON, per job."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-baseline-") as tmp:
        redis = redis_server("queue", Path(tmp)).start()
        try:
            assert redis.proc is not None
            url = f"redis://127.0.0.1:{redis.port}/0"
            calls0, cpu0 = counters.redis_calls(url), cpu_seconds(redis.proc.pid)
            out = subprocess.run(
                [*argv, str(redis.port)], check=True, capture_output=True, text=True, timeout=600
            ).stdout
            redis_cpu = cpu_seconds(redis.proc.pid) - cpu0
            calls = counters.redis_delta(calls0, counters.redis_calls(url), jobs)
        finally:
            redis.stop()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["completed"] != jobs:
        raise RuntimeError(f"baseline completed {result['completed']} of {jobs} jobs")
    seconds = result["enqueue_s"] + result["work_s"]
    cpu = result["enqueue_cpu_s"] + result["work_cpu_s"]
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "jobs_per_s": round(jobs / seconds, 1),
        "cpu_ms_per_job": round(cpu * 1000 / jobs, 4),
        "enqueue_cpu_ms_per_job": round(result["enqueue_cpu_s"] * 1000 / jobs, 4),
        "work_cpu_ms_per_job": round(result["work_cpu_s"] * 1000 / jobs, 4),
        "redis_cpu_ms_per_job": round(redis_cpu * 1000 / jobs, 4),
        "redis_commands_per_job": calls["executed_per_job"],
        "redis_commands": calls["per_job"],
    }


def run_arq(jobs: int, concurrency: int = 50, max_jobs: int = 32) -> dict[str, Any]:
    """arq: `jobs` no-op jobs enqueued by `concurrency` enqueuers, one burst worker (`max_jobs`)."""
    python = arq_python()
    version = subprocess.run(
        [str(python), "-c", "import arq.version; print(arq.version.VERSION)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    script = str(HERE / "arq_job.py")
    result = _run([str(python), script, str(jobs), str(concurrency), str(max_jobs)], jobs)
    return {"arq_version": version, **result}


def run_floor(jobs: int, batch: int = 100) -> dict[str, Any]:
    """The bare redis-py Streams pipeline: XADD / XREADGROUP / XACK in batches of `batch`."""
    return _run([sys.executable, "-m", "bench.floor", str(jobs), str(batch)], jobs)


def run(jobs: int) -> dict[str, Any]:
    return {"arq": run_arq(jobs), "redis_streams_floor": run_floor(jobs)}
