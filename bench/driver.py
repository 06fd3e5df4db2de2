"""The load driver: SubmitJob over gRPC or POST /v1/jobs over REST, in processes of its own.

On 2 cores the driver competes with what it measures, so it never runs inside the bench's
own process: `DriverPool` starts `k` driver processes (`python -m bench.driver`), each with
its share of the callers or of the offered rate. Protocol on stdin/stdout: the parent sends
one JSON config line; the child connects, warms up, prints READY, waits for GO, runs, and
prints one JSON result line. The parent reads the measured processes' CPU between READY and
the results, so neither process start-up nor warm-up is counted.

* closed loop: `concurrency` callers, each sending its next request when the last answered;
* open loop: requests fired on a fixed schedule (`rate` per second), whatever the answers
  do; latency counts from the scheduled time, so a server that falls behind is not excused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

RETRYABLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "429", "503")
MAX_OPEN = 20_000  # open loop: requests in flight at most (a server that stalls must not eat the driver)


class DriverError(Exception):
    """A refused request: its status (gRPC code name or HTTP status) and detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def _request_maker(
    cfg: dict[str, Any],
) -> tuple[Callable[[int], Awaitable[str]], Callable[[], Awaitable[None]]]:
    """(send request i → job id, close) for the configured protocol."""
    users: list[str] = cfg["users"]
    tag: str = cfg["tag"]
    auth = f"Bearer {cfg['api_key']}"
    if cfg["proto"] == "grpc":
        import grpc

        from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc

        channel = grpc.aio.insecure_channel(cfg["target"])
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        metadata = (("authorization", auth),)

        async def send_grpc(i: int) -> str:
            req = jobs_pb2.SubmitJobRequest(
                user_id=users[i % len(users)], method="flickr.test.echo", params={"r": tag, "n": str(i)}
            )
            try:
                resp = await stub.SubmitJob(req, metadata=metadata, timeout=120)
            except grpc.aio.AioRpcError as exc:
                raise DriverError(exc.code().name, exc.details() or "") from None
            return str(resp.job_id)

        async def close_grpc() -> None:
            await channel.close()

        return send_grpc, close_grpc

    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    )
    url = f"{cfg['target']}/v1/jobs"
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def send_rest(i: int) -> str:
        body = {
            "user_id": users[i % len(users)],
            "method": "flickr.test.echo",
            "params": {"r": tag, "n": str(i)},
        }
        async with session.post(url, data=json.dumps(body), headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise DriverError(str(resp.status), data[:200].decode(errors="replace"))
        return str(json.loads(data)["job_id"])

    return send_rest, session.close


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    send, close = _request_maker(cfg)
    first = int(cfg.get("first", 0))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    samples: list[str] = []
    sent: list[tuple[str, float]] = []  # (job id, wall time the request was due) when keep_ids
    keep = bool(cfg.get("keep_ids"))
    retry = bool(cfg.get("retry_backpressure"))

    async def one(i: int, due: float) -> None:
        while True:
            try:
                job_id = await send(i)
                break
            except Exception as exc:  # a refused or failed request is counted, not fatal
                code = exc.code if isinstance(exc, DriverError) else type(exc).__name__
                if retry and code in RETRYABLE:
                    await asyncio.sleep(0.2)
                    continue
                errors[code] = errors.get(code, 0) + 1
                if len(samples) < 3:
                    samples.append(f"{code}: {exc.detail if isinstance(exc, DriverError) else exc}"[:300])
                return
        latencies.append((time.perf_counter() - due) * 1000)
        if keep:
            sent.append((job_id, time.time() - (time.perf_counter() - due)))

    for i in range(int(cfg.get("warmup", 0))):  # negative request numbers: distinct from measured ones
        await one(-(first * 1000 + i + 1), time.perf_counter())
    latencies.clear()
    errors.clear()
    sent.clear()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    n = int(cfg["requests"])
    cpu0, t_start = time.process_time(), time.time()
    if cfg["mode"] == "closed":
        counter = iter(range(n))

        async def caller() -> None:
            for i in counter:
                await one(first + i, time.perf_counter())

        await asyncio.gather(*(caller() for _ in range(int(cfg["concurrency"]))))
    else:
        period = 1.0 / float(cfg["rate"])
        start = time.perf_counter() + float(cfg.get("offset_s", 0.0))
        tasks: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(MAX_OPEN)
        for i in range(n):
            due = start + i * period
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await room.acquire()
            task = asyncio.create_task(one(first + i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: room.release())
        await asyncio.gather(*tasks)
    t_end = time.time()
    await close()
    return {
        "ok": len(latencies),
        "errors": errors,
        "error_samples": samples,
        "lat_ms": [round(x, 3) for x in latencies],
        "t_start": t_start,
        "t_end": t_end,
        "cpu_s": time.process_time() - cpu0,
        "sent": sent,
    }


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class Merged:
    """The results of every driver process of one run."""

    ok: int
    errors: dict[str, int]
    error_samples: list[str]
    seconds: float
    latencies: list[float] = field(repr=False)
    sent: list[tuple[str, float]] = field(repr=False)
    driver_cpu_s: float = 0.0

    @property
    def per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def require(self, what: str, max_error_share: float = 0.01) -> Merged:
        """Raise when more than `max_error_share` of the requests failed (a broken run measures nothing)."""
        failed = sum(self.errors.values())
        if failed > max_error_share * (failed + self.ok) or self.ok == 0:
            raise RuntimeError(f"{what}: {failed} requests failed, {self.ok} ok: {self.error_samples}")
        return self

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "requests": self.ok,
            "errors": self.errors,
            **({"error_samples": self.error_samples} if self.error_samples else {}),
            "seconds": round(self.seconds, 2),
            "per_s": round(self.per_s, 1),
            "p50_ms": round(pct(lat, 0.50), 2),
            "p95_ms": round(pct(lat, 0.95), 2),
            "p99_ms": round(pct(lat, 0.99), 2),
            "driver_cpu_ms_per_request": round(self.driver_cpu_s * 1000 / max(self.ok, 1), 3),
        }


class DriverPool:
    """`configs` driver processes, started and warmed up together, then released at once."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.driver"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in configs
        ]
        for proc, cfg in zip(self.procs, configs, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cfg) + "\n")
            proc.stdin.flush()
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "READY":
                self.kill()
                raise RuntimeError(f"driver did not start (said {line!r}, exit {proc.poll()})")

    @property
    def pids(self) -> dict[str, int]:
        return {f"driver-{i}": p.pid for i, p in enumerate(self.procs)}

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()

    def results(self) -> Merged:
        """Wait for every driver and merge what they measured."""
        outs = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            proc.wait(30)
            if not line:
                raise RuntimeError(f"driver exited with {proc.returncode} without a result")
            outs.append(json.loads(line))
        errors: dict[str, int] = {}
        for out in outs:
            for code, count in out["errors"].items():
                errors[code] = errors.get(code, 0) + count
        return Merged(
            ok=sum(o["ok"] for o in outs),
            errors=errors,
            error_samples=[e for o in outs for e in o["error_samples"]][:3],
            seconds=max(o["t_end"] for o in outs) - min(o["t_start"] for o in outs),
            latencies=[x for o in outs for x in o["lat_ms"]],
            sent=[(j, t) for o in outs for j, t in o["sent"]],
            driver_cpu_s=sum(o["cpu_s"] for o in outs),
        )

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def split(base: dict[str, Any], processes: int) -> list[dict[str, Any]]:
    """One config per driver process: requests, callers and rate shared out, request numbers disjoint."""
    n, k = int(base["requests"]), max(1, processes)
    out = []
    for i in range(k):
        share = n // k + (1 if i < n % k else 0)
        cfg = {**base, "requests": share, "first": int(base.get("first", 0)) + i * (n // k + 1)}
        if base["mode"] == "closed":
            cfg["concurrency"] = max(
                1, int(base["concurrency"]) // k + (1 if i < int(base["concurrency"]) % k else 0)
            )
        else:
            cfg["rate"] = float(base["rate"]) / k
            cfg["offset_s"] = i / float(base["rate"])
        out.append(cfg)
    return out


def run(base: dict[str, Any], processes: int, during: Callable[[], object] | None = None) -> Merged:
    """Start the drivers, call `during` (e.g. a CPU window's start) just before GO, and merge."""
    pool = DriverPool(split(base, processes))
    try:
        if during is not None:
            during()
        pool.go()
        return pool.results()
    finally:
        pool.kill()


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    result = asyncio.run(_run(cfg))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
