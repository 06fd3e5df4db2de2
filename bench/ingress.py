"""Ingress: gRPC SubmitJob and REST POST /v1/jobs against bare servers, closed and open loop.

The stack runs without movers and workers (bench.stacks): ingress alone is measured, and
the bare servers, which do no work behind the answer, are compared with the same thing.
For each protocol, in one run:

* closed loop at each concurrency (50 and 200 callers, over the run's users): throughput
  and P50/P95/P99, and CPU per request of the gateway (gRPC and REST), the edge (REST; its
  own process, so its CPU is its own share), the queue Redis and SecantusDB;
* the bare server (bench.bare, its own process) at the same concurrencies: throughput,
  latency and its CPU per call;
* open loop at half the best closed-loop throughput just measured, for `open_s` seconds:
  P50/P95/P99 counted from each request's scheduled time.

Drivers are separate processes (bench.driver); their own CPU per request is reported too.
"""

from __future__ import annotations

from typing import Any

from bench import driver, stacks
from bench.bare import BareServer
from bench.procstat import CpuWindow, group, per_unit_ms, rss_mb
from devstack.stack import ProcessStack

MEASURED = ("gateway", "edge", "redis", "mongo")


def _config(proto: str, target: str, key: str, users: list[str], tag: str) -> dict[str, Any]:
    return {"proto": proto, "target": target, "api_key": key, "users": users, "tag": tag, "warmup": 50}


def _closed(
    base: dict[str, Any], n: int, concurrency: int, pids: dict[str, int], processes: int
) -> dict[str, Any]:
    window = CpuWindow(pids)
    merged = driver.run(
        {**base, "mode": "closed", "requests": n, "concurrency": concurrency}, processes, during=window.start
    )
    window.stop()
    merged.require(f"{base['proto']} closed loop c={concurrency}")
    return {
        **merged.summary(),
        "concurrency": concurrency,
        "cpu_ms_per_request": per_unit_ms(window.by_group(), merged.ok),
    }


def _open(base: dict[str, Any], rate: float, seconds: float, processes: int) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    merged = driver.run({**base, "mode": "open", "requests": n, "rate": rate}, processes)
    merged.require(f"{base['proto']} open loop at {rate:.0f}/s")
    return {**merged.summary(), "offered_per_s": round(rate, 1)}


def _protocol(
    stack: ProcessStack, proto: str, users: list[str], scale: dict[str, Any], processes: int
) -> dict[str, Any]:
    key = stacks.admin_key(stack)
    target = f"127.0.0.1:{stack.ports.gateway}" if proto == "grpc" else f"http://127.0.0.1:{stack.ports.edge}"
    pids = {name: pid for name, pid in stacks.pids(stack).items() if group(name) in MEASURED}
    out: dict[str, Any] = {"target_process": "gateway" if proto == "grpc" else "edge"}
    for c in scale["concurrency"]:
        base = _config(proto, target, key, users, f"ingress-{proto}-{c}")
        out[f"c{c}"] = _closed(base, scale["requests"], c, pids, processes)
    bare = BareServer("grpc" if proto == "grpc" else "http")
    try:
        for c in scale["concurrency"]:
            base = _config(proto, bare.target, key, users, "bare")
            out[f"bare_c{c}"] = _closed(base, scale["bare_requests"], c, {"bare": bare.pid}, processes)
    finally:
        bare.stop()
    best = max(out[f"c{c}"]["per_s"] for c in scale["concurrency"])
    base = _config(proto, target, key, users, f"ingress-{proto}-open")
    out["open_loop"] = _open(base, best / 2, scale["open_s"], processes)
    return out


def summarize(out: dict[str, Any], concurrency: list[int]) -> dict[str, Any]:
    """Per-call CPU of the measured server and of the bare one over every closed-loop run."""
    proc = out["target_process"]

    def mean_cpu(prefix: str, name: str) -> float:
        runs = [out[f"{prefix}c{c}"] for c in concurrency]
        total = sum(float(r["cpu_ms_per_request"].get(name, 0.0)) * int(r["requests"]) for r in runs)
        return round(total / max(1, sum(int(r["requests"]) for r in runs)), 4)

    return {
        f"{proc}_cpu_ms_per_request": mean_cpu("", proc),
        "gateway_cpu_ms_per_request": mean_cpu("", "gateway"),
        "bare_cpu_ms_per_request": mean_cpu("bare_", "bare"),
        **{
            f"throughput_vs_bare_c{c}": round(out[f"c{c}"]["per_s"] / out[f"bare_c{c}"]["per_s"], 3)
            for c in concurrency
        },
    }


def run(scale: dict[str, Any], processes: int = 2) -> dict[str, Any]:
    """Both protocols on one ingress-only stack (no movers, no workers)."""
    users = [f"ingress-user-{i:03d}" for i in range(scale["users"])]
    results: dict[str, Any] = {"stack": "gateway + edge, no movers or workers", "driver_processes": processes}
    with stacks.running(workers=0, movers=0) as stack:
        stacks.seed_users(stack, users)
        for proto in ("grpc", "rest"):
            out = _protocol(stack, proto, users, scale, processes)
            out.update(summarize(out, scale["concurrency"]))
            results[proto] = out
        results["rss_mb"] = {name: round(rss_mb(pid), 1) for name, pid in stacks.pids(stack).items()}
    return results
