"""The sandbox's HTTP side: Flickr's REST endpoint with Flickr's checks, plus the control routes.

Checks run in this order (FLICKR-API.md leaves the real order unverified):
format 111 → planned fault → method 112 → API key 100 → OAuth (97 missing signature,
401 parameter_absent, 98 unknown/revoked token, 96 bad signature, 401 timestamp_refused,
401 nonce_used) → signed-only methods 97 → perms 99 → the method itself.
A bad signature is answered in the envelope (code 96, HTTP 200), like every REST error;
only what the envelope has no code for (nonce, timestamp, absent parameters) is an HTTP 401.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from common.flickr_methods import NONE, perm_allows, required_perm
from common.logs import log_extra, setup_logging
from common.oauth1 import base_string, parse_authorization_header, verify
from sandbox import control, envelope
from sandbox.methods import METHODS, SIGNED_ONLY, Call, FlickrFault
from sandbox.state import TIMESTAMP_WINDOW_S, App, CallRecord, Fault, SandboxState, Token

log = logging.getLogger("sandbox")

REST_PATHS: Final = ("/services/rest", "/services/rest/")
_FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_REQUIRED_OAUTH: Final = ("oauth_consumer_key", "oauth_nonce", "oauth_timestamp", "oauth_signature_method")


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


class OAuthProblem(Exception):
    """An OAuth protocol failure answered as HTTP 401 `oauth_problem=…`."""

    def __init__(self, problem: str, **details: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.details = details


@dataclass
class RestRequest:
    """One REST request with its parameters merged from query, body and Authorization header."""

    http_method: str
    url: str  # the base-string URL as the client addressed it
    pairs: list[tuple[str, str]]  # every parameter, in arrival order, for the signature
    header_malformed: bool = False
    params: dict[str, str] = field(init=False)  # first value of each name

    def __post_init__(self) -> None:
        self.params = {}
        for name, value in self.pairs:
            self.params.setdefault(name, value)

    @property
    def method(self) -> str:
        """The Flickr method asked for ("" when missing)."""
        return self.params.get("method", "")

    @property
    def consumer_key(self) -> str | None:
        """The API key: oauth_consumer_key under OAuth, else api_key."""
        return self.params.get("oauth_consumer_key") or self.params.get("api_key") or None

    @property
    def uses_oauth(self) -> bool:
        """True when any OAuth protocol parameter (or an OAuth header) came with the request."""
        return self.header_malformed or any(name.startswith("oauth_") for name in self.params)


async def read_request(request: web.Request) -> RestRequest:
    """Merge query, form or multipart body (file parts excluded) and Authorization header params."""
    pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
    if request.method == hdrs.METH_POST and request.content_type in _FORM_TYPES:
        form = await request.post()
        # File parts (an upload's `photo`) are never part of the signature.
        pairs += [(name, value) for name, value in form.items() if isinstance(value, str)]
    malformed = False
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if header[:6].lower() == "oauth ":
        try:
            pairs += [(k, v) for k, v in parse_authorization_header(header).items() if k != "realm"]
        except ValueError:
            malformed = True
    # Behind a TLS-terminating proxy the client signed https://…; honour what it says it used.
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip().lower()
    url = f"{scheme}://{request.host}{request.rel_url.raw_path}"
    return RestRequest(request.method, url, pairs, malformed)


def authorize(state: SandboxState, req: RestRequest) -> Token | None:
    """Run Flickr's key, OAuth and permission checks; the caller's token, if any."""
    if req.method not in METHODS:
        raise FlickrFault(112, f'Method "{req.method}" not found')
    if req.consumer_key is None:
        raise FlickrFault(100, "Invalid API Key (Key has invalid format)")
    app = state.apps.get(req.consumer_key)
    if app is None:
        raise FlickrFault(100, "Invalid API Key (Key not found)")
    token = check_oauth(state, req, app) if req.uses_oauth else None
    if not req.uses_oauth and req.method in SIGNED_ONLY:
        raise FlickrFault(97, "Missing signature")
    required = required_perm(req.method)
    if required != NONE:
        if token is None:
            raise FlickrFault(99, "User not logged in / Insufficient permissions")
        if not perm_allows(token.perms, required):
            raise FlickrFault(
                99, f"Insufficient permissions. Method requires {required} privileges; {token.perms} granted."
            )
    return token


def check_oauth(state: SandboxState, req: RestRequest, app: App) -> Token | None:
    """Verify the OAuth signature, token, timestamp and nonce; the token, if one was sent."""
    params = req.params
    if req.header_malformed:
        raise FlickrFault(96, "Invalid signature")
    if "oauth_signature" not in params:
        raise FlickrFault(97, "Missing signature")
    absent = [name for name in _REQUIRED_OAUTH if name not in params]
    if absent:
        raise OAuthProblem("parameter_absent", oauth_parameters_absent="&".join(absent))
    token = None
    if "oauth_token" in params:
        token = state.tokens.get(params["oauth_token"])
        if token is None or token.consumer_key not in (None, app.consumer_key):
            raise FlickrFault(98, "Invalid auth token")
    secret = token.token_secret if token else ""
    if not verify(req.http_method, req.url, req.pairs, app.consumer_secret, secret):
        # The base string holds no secret; it is what a client developer needs to compare.
        log.info("invalid signature; base string: %s", base_string(req.http_method, req.url, req.pairs))
        raise FlickrFault(96, "Invalid signature")
    timestamp, now = params["oauth_timestamp"], int(state.clock())
    if not timestamp.isdigit() or abs(int(timestamp) - now) > TIMESTAMP_WINDOW_S:
        window = f"{now - TIMESTAMP_WINDOW_S}-{now + TIMESTAMP_WINDOW_S}"
        raise OAuthProblem("timestamp_refused", oauth_acceptable_timestamps=window)
    if not state.use_nonce(app.consumer_key, params.get("oauth_token", ""), params["oauth_nonce"], timestamp):
        raise OAuthProblem("nonce_used")
    return token


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


async def apply_fault(fault: Fault) -> web.Response | None:
    """Act out a planned fault; a response replaces the answer, None lets the call go on."""
    if fault.kind == "latency":
        await asyncio.sleep(fault.latency_ms / 1000)
        return None
    if fault.kind == "flickr_error":
        raise FlickrFault(fault.code, fault.message)
    return envelope.http_error(fault.status)


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
            if request.transport is not None:
                request.transport.close()
            # Nothing more is written: the client sees the connection close without an answer.
            raise asyncio.CancelledError
        if fault is not None and (replaced := await apply_fault(fault)) is not None:
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
    # Imported here: sandbox.oauth builds on this module's read_request.
    from sandbox import oauth

    oauth.install(app)
    # Imported here too: sandbox.uploads builds on this module's OAuth checks.
    from sandbox import uploads

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
