"""The REST edge's own CPU per request, beside a bare aiohttp JSON handler measured in the same run.

Three server processes, each alone in its process so /proc/<pid>/stat (user + system, all
threads) counts only its own work:

- `echo`: the gRPC echo servicer of the edge tests (tests/helpers/echo_servicer.py), standing
  in for the gateway so the edge is measured, not the gateway behind it;
- `edge`: `python -m edge` exactly as deployed (logging and the tracing SDK set up by
  `bootstrap`), dialing the echo servicer;
- `bare`: an aiohttp app whose one handler parses the JSON body and answers a
  SubmitJobResponse-shaped JSON object (the floor for any aiohttp REST front).

The driver (this process) sends `POST /v1/jobs` over keep-alive HTTP/1.1 connections, one per
concurrent caller, with a minimal client of its own (a few µs per request) so the shared cores
go to the servers. Each target is run at every concurrency; CPU ms per request, throughput and
P50/P95/P99 latency are reported, and the edge's CPU as a ratio to the bare handler's.

    .venv/bin/python -m bench.edge_cost [--requests 3000] [--concurrency 50 200] [--rounds 3]
        [--delay-ms 0] [--profile DIR] [--ref-tree OTHER_CHECKOUT]

`--profile DIR` also records the edge with py-spy during its first round (flame graph and raw
stacks in DIR). `--delay-ms` slows the echo servicer and the bare handler alike, for request
rates like a real gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EDGE_TARGET_MS = 0.35
_TICK = os.sysconf("SC_CLK_TCK")
_BODY = json.dumps(
    {"user_id": "bench-user", "method": "flickr.photos.search", "params": {"text": "sunset", "per_page": "3"}}
).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the servers (run as `python -m bench.edge_cost --serve echo|bare PORT`) -------------------


async def _serve_echo(port: int, delay: float) -> None:
    import grpc.aio

    from flickrhub.v1 import jobs_pb2_grpc
    from tests.helpers import echo_servicer

    class Slow(echo_servicer.EchoJobs):
        async def SubmitJob(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(delay)
            return await super().SubmitJob(request, context)

    server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(Slow(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _serve_bare(port: int, delay: float) -> None:
    import uuid

    from aiohttp import web

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(delay)
        return web.json_response(
            {"job_id": str(uuid.uuid4()), "state": "JOB_STATE_QUEUED", "trace_id": str(body.get("user_id"))}
        )

    app = web.Application()
    app.router.add_post("/v1/jobs", submit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One target at one concurrency."""

    target: str
    concurrency: int
    requests: int
    cpu_ms_per_request: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def _request(port: int) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(_BODY)}\r\n\r\n"
    ).encode() + _BODY


async def _caller(port: int, budget: list[int], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    request = _request(port)
    try:
        while budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
    finally:
        writer.close()


def _pct(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)


async def drive(target: str, port: int, pid: int, n: int, concurrency: int) -> Run:
    """`n` POST /v1/jobs at `concurrency` callers; the server process's CPU per request."""
    warm: list[float] = []
    await asyncio.gather(*(_caller(port, [20], warm, [0]) for _ in range(min(concurrency, 10))))
    budget, latencies, errors = [n], list[float](), [0]
    cpu_before, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(_caller(port, budget, latencies, errors) for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu_before
    ordered = sorted(latencies)
    return Run(
        target=target,
        concurrency=concurrency,
        requests=len(latencies),
        cpu_ms_per_request=round(cpu / len(latencies) * 1e3, 3),
        requests_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=_pct(ordered, 0.50),
        p95_ms=_pct(ordered, 0.95),
        p99_ms=_pct(ordered, 0.99),
        errors=errors[0],
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def _process(args: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy records `pid` (raw stacks and a flame graph) while the block runs, when `out` is given."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if out is None or spy is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [spy, "record", "-r", "200", "-f", fmt, "-o", str(out / f"edge.{suffix}"), "--pid", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt"))
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(30)


def _median_run(runs: list[Run]) -> Run:
    """The round with the median CPU per request (the machine is shared: rounds vary)."""
    return sorted(runs, key=lambda r: r.cpu_ms_per_request)[len(runs) // 2]


def run(
    n: int = 3000,
    concurrency: tuple[int, ...] = (50, 200),
    delay_ms: float = 0.0,
    rounds: int = 3,
    profile: Path | None = None,
    ref_tree: Path | None = None,
) -> dict[str, Any]:
    """Edge vs bare aiohttp: CPU ms per request, req/s and latency percentiles at each concurrency.

    Each (target, concurrency) runs `rounds` times, bare and edge alternating, and the round with
    the median CPU per request is reported. `delay_ms` makes the echo servicer and the bare handler
    wait that long before answering, so both see a request rate like a real gateway's (less
    batching per event-loop turn). `ref_tree` (another checkout, e.g. a `git worktree` of an
    older commit) adds its edge as target `edge-ref`, measured in the same rounds.
    """
    me = [sys.executable, "-m", "bench.edge_cost", "--delay-ms", str(delay_ms), "--serve"]
    echo_port, edge_port, bare_port = free_port(), free_port(), free_port()
    edge_env = {
        "GATEWAY_ADDR": f"127.0.0.1:{echo_port}",
        "EDGE_PORT": str(edge_port),
        "EDGE_METRICS_PORT": "-1",
        "LOG_LEVEL": "WARNING",
    }
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process([*me, "echo", str(echo_port)], echo_port, {}))
        targets = {
            "bare": (
                bare_port,
                stack.enter_context(_process([*me, "bare", str(bare_port)], bare_port, {})).pid,
            ),
            "edge": (
                edge_port,
                stack.enter_context(_process([sys.executable, "-m", "edge"], edge_port, edge_env)).pid,
            ),
        }
        if ref_tree is not None:
            ref_port = free_port()
            roots = ":".join(str(ref_tree / root) for root in ("services", "libs", "gen", "."))
            ref_env = {**edge_env, "EDGE_PORT": str(ref_port), "PYTHONPATH": roots}
            ref = stack.enter_context(_process([sys.executable, "-m", "edge"], ref_port, ref_env))
            targets["edge-ref"] = (ref_port, ref.pid)
        for c in concurrency:
            by_target: dict[str, list[Run]] = {name: [] for name in targets}
            for i in range(rounds):
                for name, (port, pid) in targets.items():
                    record = profile if name == "edge" and c == concurrency[0] and i == 0 else None
                    with _profiled(pid, record):
                        by_target[name].append(asyncio.run(drive(name, port, pid, n, c)))
            runs += [_median_run(found) for found in by_target.values()]
    by = {(r.target, r.concurrency): r for r in runs}
    edge_ms = max(by["edge", c].cpu_ms_per_request for c in concurrency)
    extra: dict[str, Any] = {}
    if ref_tree is not None:
        extra["edge_ref_cpu_ms_per_request"] = max(by["edge-ref", c].cpu_ms_per_request for c in concurrency)
    return {
        "runs": [asdict(r) for r in runs],
        "edge_cpu_ms_per_request": edge_ms,
        **extra,
        "bare_cpu_ms_per_request": max(by["bare", c].cpu_ms_per_request for c in concurrency),
        "edge_to_bare": {
            str(c): round(by["edge", c].cpu_ms_per_request / by["bare", c].cpu_ms_per_request, 2)
            for c in concurrency
        },
        "delay_ms": delay_ms,
        "rounds": rounds,
        "target_ms": EDGE_TARGET_MS,
        "ok": edge_ms <= EDGE_TARGET_MS and all(r.errors == 0 for r in runs),
    }


def main() -> None:
    """Command line: measure (default) or serve one of the benchmark's servers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--ref-tree", type=Path, help="another checkout whose edge is measured too")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"))
    args = parser.parse_args()
    if args.serve:
        kind, port = args.serve
        delay = args.delay_ms / 1e3
        asyncio.run(_serve_echo(int(port), delay) if kind == "echo" else _serve_bare(int(port), delay))
        return
    result = run(
        args.requests, tuple(args.concurrency), args.delay_ms, args.rounds, args.profile, args.ref_tree
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
