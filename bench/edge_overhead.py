"""CPU cost of the REST edge: server-side CPU µs per request through the edge vs direct gRPC.

A child process hosts the echo test servicer (grpc.aio) and the edge app (dialing that
servicer over a real channel). The parent drives it, alternately, with direct gRPC calls
and with REST calls through the edge, and reads the child's CPU time before and after each
round, so client cost is not counted. The edge's own cost is `edge_us - direct_us`; the
ratio `edge_us / direct_us` is measured in the same run (the machine is noisy), per round,
and the median is reported. `grpc_client_us` is the parent's CPU per direct call: the cost
of a Python grpc.aio client call, which the edge pays on every request. No tracing SDK is
configured (the edge's spans are no-ops).

    .venv/bin/python -m bench.edge_overhead [n]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

CONCURRENCY = 8
ROUNDS = 5


def _serve(conn: Connection) -> None:
    """Child: echo servicer + edge on free ports; answers "cpu" with its process CPU time."""
    import grpc.aio
    from aiohttp import web

    from common.settings import Settings
    from edge import app as edge_app
    from tests.helpers.echo_servicer import start_server

    async def main() -> None:
        server, grpc_port, _, _ = await start_server()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        runner = web.AppRunner(edge_app.create_app(Settings.from_env({}), channel), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def control() -> None:
            while True:
                command = conn.recv()
                if command == "cpu":
                    conn.send(time.process_time())
                else:
                    loop.call_soon_threadsafe(stop.set)
                    return

        conn.send((grpc_port, http_port))
        threading.Thread(target=control, daemon=True).start()
        await stop.wait()
        await runner.cleanup()
        await channel.close()
        await server.stop(None)

    asyncio.run(main())


async def _drive(n: int, one: Callable[[], Awaitable[None]]) -> None:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _measure(n: int, conn: Connection, grpc_port: int, http_port: int) -> dict[str, Any]:
    import aiohttp
    import grpc.aio

    from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc

    def child_cpu() -> float:
        conn.send("cpu")
        value: float = conn.recv()
        return value

    base = f"http://127.0.0.1:{http_port}"
    submit_body = {"user_id": "bench", "method": "flickr.photos.search", "params": {"text": "cats"}}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http,
    ):
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job_id = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(**submit_body))).job_id  # type: ignore[arg-type]

        async def grpc_get() -> None:
            await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))

        async def rest_get() -> None:
            async with http.get(f"{base}/v1/jobs/{job_id}") as resp:
                await resp.read()
                assert resp.status == 200

        async def grpc_submit() -> None:
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(**submit_body))  # type: ignore[arg-type]

        async def rest_submit() -> None:
            async with http.post(f"{base}/v1/jobs", json=submit_body) as resp:
                await resp.read()
                assert resp.status == 200

        async def cpu_per_request(one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
            """(server CPU µs, client CPU µs) per request."""
            before, client_before = child_cpu(), time.process_time()
            await _drive(n, one)
            client = (time.process_time() - client_before) / n * 1e6
            return (child_cpu() - before) / n * 1e6, client

        results: dict[str, Any] = {"n": n, "concurrency": CONCURRENCY, "rounds": ROUNDS}
        for name, direct, edge in (("get_job", grpc_get, rest_get), ("submit_job", grpc_submit, rest_submit)):
            await _drive(min(n, 200), direct)  # warm-up both paths
            await _drive(min(n, 200), edge)
            direct_us: list[float] = []
            edge_us: list[float] = []
            grpc_client_us: list[float] = []
            for _ in range(ROUNDS):
                server, client = await cpu_per_request(direct)
                direct_us.append(server)
                grpc_client_us.append(client)
                edge_us.append((await cpu_per_request(edge))[0])
            ratios = [e / d for e, d in zip(edge_us, direct_us, strict=True)]
            overheads = [e - d for e, d in zip(edge_us, direct_us, strict=True)]
            results[name] = {
                "direct_us": round(statistics.median(direct_us), 1),
                "edge_us": round(statistics.median(edge_us), 1),
                "edge_overhead_us": round(statistics.median(overheads), 1),
                "ratio": round(statistics.median(ratios), 2),
                # What a Python grpc.aio client call costs by itself (the edge pays it on every request).
                "grpc_client_us": round(statistics.median(grpc_client_us), 1),
            }
        return results


def run(n: int) -> dict[str, Any]:
    """Server CPU µs/request direct vs through the edge, `n` requests per round and path."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    try:
        grpc_port, http_port = parent.recv()
        return asyncio.run(_measure(n, parent, grpc_port, http_port))
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=2))
