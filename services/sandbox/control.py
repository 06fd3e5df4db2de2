"""The control interface under /_sandbox/: register apps and tokens, plan faults, read the call log.

JSON in, JSON out; a malformed request answers 400 `{"error": "…"}`. Used by the
test suite and by FlickrHub's dev stack, never by FlickrHub's services.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from sandbox.state import FAULT_KINDS, PERMS, App, SandboxState, Token

STATE: Final = web.AppKey("sandbox_state", SandboxState)
PREFIX: Final = "/_sandbox"
# Default messages of the Flickr codes a fault most often plays.
_MESSAGES: Final = {105: "Service currently unavailable", 106: "Write operation failed"}


Handler = Callable[[web.Request], Awaitable[web.Response]]


class BadRequest(Exception):
    """The control request cannot be used; the message says why."""


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE]


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _get(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise BadRequest(f"{name} is required")
        return default
    value = body[name]
    # bool is an int in Python, never a valid int field here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name} must be a {kind.__name__}")
    return value


def _json_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


async def add_app(request: web.Request) -> web.Response:
    """POST /_sandbox/apps {consumer_key, consumer_secret} → 201."""
    body = await _body(request)
    app = App(_get(body, "consumer_key", str), _get(body, "consumer_secret", str))
    _state(request).add_app(app)
    return web.json_response({"consumer_key": app.consumer_key}, status=201)


async def add_token(request: web.Request) -> web.Response:
    """POST /_sandbox/tokens {consumer_key?, token, token_secret, user_nsid, username, perms, fullname?}."""
    body = await _body(request)
    state = _state(request)
    perms = _get(body, "perms", str)
    if perms not in PERMS:
        raise BadRequest(f"perms must be one of {sorted(PERMS)}")
    consumer_key = _get(body, "consumer_key", str, None)
    if consumer_key is not None and consumer_key not in state.apps:
        raise BadRequest(f"consumer_key {consumer_key!r} is not a registered app")
    token = Token(
        token=_get(body, "token", str),
        token_secret=_get(body, "token_secret", str),
        user_nsid=_get(body, "user_nsid", str),
        username=_get(body, "username", str),
        perms=perms,
        consumer_key=consumer_key,
        fullname=_get(body, "fullname", str, ""),
    )
    state.add_token(token)
    return web.json_response({"token": token.token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    """DELETE /_sandbox/tokens/{token} → 204, or 404 for an unknown token."""
    if not _state(request).revoke_token(request.match_info["token"]):
        return web.json_response({"error": "unknown token"}, status=404)
    return web.Response(status=204)


async def add_fault(request: web.Request) -> web.Response:
    """POST /_sandbox/faults {method?, kind, status?, code?, message?, latency_ms?, times?} → 201 {id, …}."""
    body = await _body(request)
    kind = _get(body, "kind", str)
    if kind not in FAULT_KINDS:
        raise BadRequest(f"kind must be one of {sorted(FAULT_KINDS)}")
    status = _get(body, "status", int, 500)
    if not 400 <= status <= 599:
        raise BadRequest("status must be an HTTP error status (400-599)")
    code = _get(body, "code", int, 105)
    times = _get(body, "times", int, 1)
    latency_ms = _get(body, "latency_ms", int, 0)
    if times == 0 or times < -1 or latency_ms < 0:
        raise BadRequest("times must be -1 or positive, latency_ms not negative")
    fault = _state(request).add_fault(
        method=_get(body, "method", str, "*"),
        kind=kind,
        status=status,
        code=code,
        message=_get(body, "message", str, _MESSAGES.get(code, f"Sandbox fault {code}")),
        latency_ms=latency_ms,
        times=times,
    )
    return web.json_response(fault.public(), status=201)


async def list_faults(request: web.Request) -> web.Response:
    """GET /_sandbox/faults → the planned faults with their remaining uses."""
    return web.json_response([fault.public() for fault in _state(request).faults])


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /_sandbox/faults → 204."""
    _state(request).faults.clear()
    return web.Response(status=204)


async def list_calls(request: web.Request) -> web.Response:
    """GET /_sandbox/calls[?method=…] → the call log, oldest first."""
    method = request.query.get("method")
    calls = [c.public() for c in _state(request).calls if method is None or c.method == method]
    return web.json_response(calls)


async def clear_calls(request: web.Request) -> web.Response:
    """DELETE /_sandbox/calls → 204."""
    _state(request).calls.clear()
    return web.Response(status=204)


async def reset(request: web.Request) -> web.Response:
    """POST /_sandbox/reset → 204; everything but the seeds is forgotten."""
    _state(request).reset()
    return web.Response(status=204)


async def health(request: web.Request) -> web.Response:
    """GET /_sandbox/health → 200 {"status": "ok"}."""
    return web.json_response({"status": "ok"})


def routes() -> list[web.RouteDef]:
    """Every control route."""
    table: list[tuple[str, str, Handler]] = [
        ("POST", "/apps", add_app),
        ("POST", "/tokens", add_token),
        ("DELETE", "/tokens/{token}", revoke_token),
        ("POST", "/faults", add_fault),
        ("GET", "/faults", list_faults),
        ("DELETE", "/faults", clear_faults),
        ("GET", "/calls", list_calls),
        ("DELETE", "/calls", clear_calls),
        ("POST", "/reset", reset),
        ("GET", "/health", health),
    ]
    return [web.route(verb, PREFIX + path, _json_errors(handler)) for verb, path, handler in table]
