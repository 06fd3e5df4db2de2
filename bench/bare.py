"""Bare baselines in processes of their own: what a trivial server costs for the same messages.

* `grpc`: a stock grpc.aio server whose JobService answers SubmitJob (SubmitJobRequest →
  SubmitJobResponse with a fresh id) and nothing else; no interceptors, no storage.
* `http`: a stock aiohttp app whose `POST /v1/jobs` parses the same JSON, checks the two
  required fields and answers the same JSON shape (`job_id`, `state`, `trace_id`).

Both run the default asyncio event loop and the standard library's json (what "bare" means
here). `python -m bench.bare grpc|http` prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any


async def _serve_grpc() -> None:
    import grpc

    from flickrhub.v1 import jobs_pb2

    async def submit(
        request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.SubmitJobResponse:
        if not request.user_id or not request.method:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id and method are required")
        return jobs_pb2.SubmitJobResponse(
            job_id=uuid.uuid4().hex, state=jobs_pb2.JOB_STATE_QUEUED, trace_id=uuid.uuid4().hex
        )

    handler = grpc.unary_unary_rpc_method_handler(
        submit,
        request_deserializer=jobs_pb2.SubmitJobRequest.FromString,
        response_serializer=jobs_pb2.SubmitJobResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("flickrhub.v1.JobService", {"SubmitJob": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


async def _serve_http() -> None:
    from aiohttp import web

    async def submit(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if not isinstance(body.get("user_id"), str) or not isinstance(body.get("method"), str):
            return web.json_response({"code": 3, "message": "user_id and method are required"}, status=400)
        answer = {"job_id": uuid.uuid4().hex, "state": "JOB_STATE_QUEUED", "trace_id": uuid.uuid4().hex}
        return web.Response(body=json.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/jobs", submit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()


class BareServer:
    """A bare server process (`kind` grpc or http) on a free port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare", kind], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"bare {kind} server did not start")
        self.port = int(line[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}" if self.kind == "grpc" else f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    asyncio.run(_serve_grpc() if sys.argv[1] == "grpc" else _serve_http())
