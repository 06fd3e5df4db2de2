"""CPU per job of every FlickrHub process and store, and the stores' operations per job.

A stack (as `make run` starts it: gateway, mover, two workers, cache service, edge, queue
Redis, cache Redis, SecantusDB, the Flickr sandbox) takes `jobs` echo jobs over `users`
users, each with its own token, submitted over gRPC by driver processes (see bench.driver)
with the admin key; each job has distinct params, so each is a cache miss. Completion is read
from the queue Redis (how many jobs are still open: a ZCARD every 50 ms, taken out of the Redis
command counts), then confirmed by the workers' Prometheus counters once: never by polling the
gateway or scraping the workers while they work, so the measured processes only do the jobs' own
work.

Around the run: CPU of every process from /proc (bench.procstat), `INFO commandstats` of
both Redis servers and SecantusDB's `top`/`serverStatus` (bench.counters). After it: every
process's RSS, and the stand-in's own write capacity (bench.storecap). With `profile_dir`,
py-spy records a flame graph of each service during the run (which perturbs the CPU figures).

    .venv/bin/python -m bench.cost [jobs] [users] [concurrency]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import counters, driver, stacks, storecap
from bench.procstat import CpuWindow, group, per_unit_ms, rss_mb
from devstack.stack import ProcessStack

FLICKRHUB = ("gateway", "mover", "worker", "cache")  # the per-job budget (the REST edge is excluded)
SERVICES = ("gateway", "mover", "worker", "cache", "edge")


def submit_config(
    stack: ProcessStack, users: list[str], n: int, concurrency: int, tag: str
) -> dict[str, Any]:
    """A closed-loop gRPC SubmitJob driver config for `stack`."""
    return {
        "proto": "grpc",
        "target": f"127.0.0.1:{stack.ports.gateway}",
        "api_key": stacks.admin_key(stack),
        "users": users,
        "tag": tag,
        "mode": "closed",
        "requests": n,
        "concurrency": concurrency,
        "retry_backpressure": True,
    }


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when its bin/ is not on PATH
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install -e '.[dev]' -c constraints.txt")
    return found


def _start_profilers(by_name: dict[str, int], out: Path) -> list[subprocess.Popen[bytes]]:
    """One `py-spy record --native` per service process; its output and errors in <out>/<name>.log."""
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    exe = _py_spy()
    # BENCH_PROFILE_FORMAT=raw writes collapsed stacks (<name>.txt) to add up by function instead.
    fmt = os.environ.get("BENCH_PROFILE_FORMAT", "flamegraph")
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[fmt]
    # BENCH_PROFILE_NATIVE=0 samples Python frames only, without stopping the process (--nonblocking):
    # on these VMs --native over-weights syscalls (py-spy stops a thread at its next kernel entry).
    native = os.environ.get("BENCH_PROFILE_NATIVE", "1") != "0"
    mode = ["--native"] if native else ["--nonblocking"]
    rate = os.environ.get("BENCH_PROFILE_RATE", "100")  # samples per second
    for name, pid in by_name.items():
        if group(name) in SERVICES:
            dest = str(out / f"{name}.{suffix}")
            cmd = [exe, "record", *mode, "-f", fmt, "-r", rate, "-o", dest, "--pid", str(pid)]
            with (out / f"{name}.log").open("wb") as log:
                spies.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    time.sleep(1.0)  # py-spy attaches
    return spies


def _stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()


def measure(
    stack: ProcessStack,
    n: int,
    n_users: int,
    concurrency: int,
    processes: int,
    *,
    warmup: int = 200,
    idle_s: float = 3.0,
    capacity_docs: int = 3000,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Run `n` jobs through a started stack; CPU, store operations and RSS around the run."""
    users = [f"bench-user-{i:03d}" for i in range(n_users)]
    stacks.seed_users(stack, users)
    settings = stack.settings
    done0 = stacks.finished(stack)
    warm = driver.run(submit_config(stack, users, warmup, concurrency, "warm-up"), processes).require(
        "warm-up"
    )
    stacks.wait_finished(stack, done0 + warm.ok)
    by_name = stacks.pids(stack)
    idle = CpuWindow(by_name).start()
    time.sleep(idle_s)
    idle_pct = {k: round(v * 100 / idle_s, 1) for k, v in idle.stop().items()}

    spies = _start_profilers(by_name, profile_dir) if profile_dir else []
    base_done = stacks.finished(stack)
    polls_before = stacks.polls
    redis_before = {
        "queue": counters.redis_calls(settings.redis_url),
        "cache": counters.redis_calls(settings.cache_redis_url),
    }
    mongo_before = counters.mongo_counters(settings.mongo_url)
    window = CpuWindow(by_name)
    t0 = time.perf_counter()
    submitted = driver.run(
        submit_config(stack, users, n, concurrency, "cost"), processes, during=window.start
    )
    submitted.require("cost run")
    ended = stacks.wait_finished(stack, base_done + submitted.ok) - base_done
    total_s = time.perf_counter() - t0
    window.stop()
    mongo_after = counters.mongo_counters(settings.mongo_url)
    redis_after = {
        "queue": counters.redis_calls(settings.redis_url),
        "cache": counters.redis_calls(settings.cache_redis_url),
    }
    _stop_profilers(spies)
    jobs = submitted.ok
    cpu = per_unit_ms(window.by_group(), jobs)
    own = {"queue": {"zcard": stacks.polls - polls_before}}  # wait_finished's completion polls
    redis = {
        role: counters.redis_delta(redis_before[role], redis_after[role], jobs, own.get(role))
        for role in redis_before
    }
    concern = str(getattr(settings, "mongo_write_concern", "journaled"))  # MONGO_WRITE_CONCERN
    capacity = storecap.measure(settings.mongo_url, settings.mongo_db, capacity_docs, concurrency, concern)
    return {
        "jobs": jobs,
        "jobs_ended": ended,
        "users": n_users,
        "concurrency": concurrency,
        "driver_processes": processes,
        "submit": submitted.summary(),
        "end_to_end_s": round(total_s, 2),
        "jobs_per_s": round(jobs / total_s, 1),
        "cpu_ms_per_job": cpu,
        "flickrhub_cpu_ms_per_job": round(sum(cpu.get(s, 0.0) for s in FLICKRHUB), 3),
        "idle_cpu_pct": idle_pct,
        "rss_mb": {name: round(rss_mb(pid), 1) for name, pid in by_name.items()},
        "redis": redis,
        "redis_executed_per_job": round(sum(r["executed"] for r in redis.values()) / max(jobs, 1), 2),
        "redis_total_per_job": round(sum(r["total_calls"] for r in redis.values()) / max(jobs, 1), 2),
        "mongo": counters.mongo_delta(mongo_before, mongo_after, jobs),
        "store_capacity": capacity,
        "flame_graphs": sorted(str(p) for p in profile_dir.glob("*.svg")) if profile_dir else [],
    }


def run(
    n: int, n_users: int, concurrency: int, processes: int = 2, profile_dir: Path | None = None, **kw: Any
) -> dict[str, Any]:
    """`measure` on a fresh stack (two workers, one mover)."""
    with stacks.running(workers=2, movers=1) as stack:
        return measure(stack, n, n_users, concurrency, processes, profile_dir=profile_dir, **kw)


def main() -> None:
    import json

    args = [int(a) for a in sys.argv[1:4]]
    n, users, conc = (args + [4000, 50, 50][len(args) :])[:3]
    print(json.dumps(run(n, users, conc), indent=2))


if __name__ == "__main__":
    main()
