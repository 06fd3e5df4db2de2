"""The sandbox's HTTP side: Flickr's REST endpoint, plus the OAuth, upload and control routes.

A REST call goes: format 111 → planned fault (sandbox.faults) → Flickr's checks
(sandbox.checks: method 112, API key 100, OAuth, signed-only 97, perms 99) → the
method itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from common.logs import log_extra, setup_logging
from sandbox import control, envelope, faults, oauth, uploads
from sandbox.checks import OAuthProblem, authorize
from sandbox.methods import METHODS, Call, FlickrFault
from sandbox.params import RestRequest, read_request
from sandbox.state import CallRecord, SandboxState

log = logging.getLogger("sandbox")

REST_PATHS: Final = ("/services/rest", "/services/rest/")


@dataclass(frozen=True)
class SandboxSettings:
    """How `python -m sandbox` runs."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8765
    """TCP port; 0 picks a free one (the READY line tells which)."""
    seed_demo: bool = False
    """Seed the fixed demo app and demo user token (see sandbox.state)."""
    log_level: str = "INFO"
    """Python log level of the sandbox's JSON logs."""


def finish(
    state: SandboxState, req: RestRequest, response: web.Response | None, stat: str | None, code: int | None
) -> None:
    """Log the call and add it to the call log (`response` None: the connection was dropped)."""
    status = response.status if response is not None else None
    params = {k: v for k, v in req.params.items() if k != "oauth_signature"}
    token = req.params.get("oauth_token")
    state.record(CallRecord(req.method, params, status, stat, code, req.consumer_key, token, state.clock()))
    fields = log_extra(method=req.method, consumer_key=req.consumer_key, http_status=status, code=code)
    log.info("flickr call", extra=fields)


async def rest(request: web.Request) -> web.StreamResponse:
    """The Flickr REST endpoint."""
    state: SandboxState = request.app[control.STATE]
    req = await read_request(request)
    answer_in = envelope.XML
    try:
        answer_in = envelope.choose(req.params)
        fault = state.take_fault(req.method)
        if fault is not None and fault.kind == "drop":
            finish(state, req, None, None, None)
            faults.drop(request)
        if fault is not None and (replaced := await faults.apply(fault)) is not None:
            finish(state, req, replaced, None, None)
            return replaced
        token = authorize(state, req)
        body = METHODS[req.method](Call(req.method, req.params, token, state))
    except FlickrFault as error:
        failed = envelope.fail(answer_in, error.code, error.message)
        finish(state, req, failed, "fail", error.code)
        return failed
    except OAuthProblem as problem:
        refused = envelope.oauth_problem(problem.problem, **problem.details)
        finish(state, req, refused, None, None)
        return refused
    response = envelope.ok(answer_in, body)
    finish(state, req, response, "ok", None)
    return response


def create_app(state: SandboxState) -> web.Application:
    """The sandbox application serving `state`."""
    app = web.Application()
    app[control.STATE] = state
    for path in REST_PATHS:
        app.router.add_get(path, rest)
        app.router.add_post(path, rest)
    app.add_routes(control.routes())
    oauth.install(app)
    uploads.install(app)
    return app


async def start(state: SandboxState, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `state` on host:port (0: a free port); the runner to clean up and the bound port."""
    runner = web.AppRunner(create_app(state), access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


async def run(settings: SandboxSettings) -> None:
    """Serve until SIGTERM or SIGINT; print `READY <host> <port>` once listening."""
    setup_logging("sandbox", settings.log_level)
    state = SandboxState.demo() if settings.seed_demo else SandboxState()
    runner, port = await start(state, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"READY {settings.host} {port}", flush=True)
    log.info("sandbox listening", extra={"host": settings.host, "port": port, "demo": settings.seed_demo})
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("sandbox stopped")
