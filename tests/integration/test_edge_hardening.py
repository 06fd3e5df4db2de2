"""REST hardening at the edge, over real HTTP: headers, CORS, body limits, content types, error ids."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web

from common.grpc_errors import ErrorInterceptor
from common.settings import Settings
from edge import app as edge_app
from edge import hardening, routes
from flickrhub.v1 import jobs_pb2_grpc
from tests.helpers.echo_servicer import EchoJobs

ORIGIN = "https://app.example.com"
MB = 1024 * 1024


@dataclass
class Edge:
    base: str
    port: int
    http: aiohttp.ClientSession
    jobs: EchoJobs
    runner: web.AppRunner


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    # The echo servicer behind FlickrHub's own error interceptor, as the gateway runs it.
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    jobs = EchoJobs()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    settings = Settings.from_env({"CORS_ALLOWED_ORIGINS": f"{ORIGIN}, http://localhost:3000"})
    runner = web.AppRunner(edge_app.create_app(settings, channel), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        yield Edge(f"http://127.0.0.1:{port}", port, http, jobs, runner)
    await runner.cleanup()
    await channel.close()
    await server.stop(None)


def _assert_security_headers(headers: Any, csp: str = hardening.API_CSP) -> None:
    assert headers["Content-Security-Policy"] == csp
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Origin" in headers["Vary"]


async def test_security_headers_on_success_error_and_unknown_paths(edge: Edge) -> None:
    for method, path, expected in (
        ("GET", "/healthz", 200),
        ("GET", "/nowhere", 404),
        ("GET", "/v1/jobs/not-a-job", 404),
        ("GET", "/v1/jobs", 400),
        ("DELETE", "/v1/jobs", 405),
        ("GET", "/api/v1/flickr/nothing", 404),
    ):
        async with edge.http.request(method, edge.base + path) as resp:
            assert resp.status == expected, (path, await resp.text())
            _assert_security_headers(resp.headers)
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.content_type == "application/json"


async def test_docs_page_gets_its_own_csp_from_the_one_policy_table(edge: Edge) -> None:
    assert hardening.policy_for("/docs").csp == hardening.DOCS_CSP
    assert hardening.policy_for("/docs/static/swagger-ui-bundle.js").csp == hardening.DOCS_CSP
    assert hardening.policy_for("/docsx").csp == hardening.API_CSP
    assert hardening.policy_for("/v1/jobs").csp == hardening.API_CSP
    async with edge.http.get(f"{edge.base}/docs") as resp:
        if resp.status == 200:  # served by the OpenAPI module when it is installed
            _assert_security_headers(resp.headers, hardening.DOCS_CSP)
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_cors_preflight_is_answered_for_allowed_origins_only(edge: Edge) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-signature"}
    async with edge.http.options(f"{edge.base}/v1/jobs", headers={"Origin": ORIGIN, **ask}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        expected = {"authorization", "x-api-key", "x-idempotency-key", "traceparent"}
        assert expected | {"x-api-key-id", "x-timestamp", "x-nonce", "x-signature"} <= allowed
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in resp.headers
        _assert_security_headers(resp.headers)
    headers = {"Origin": "https://evil.example", **ask}
    async with edge.http.options(f"{edge.base}/v1/jobs", headers=headers) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        _assert_security_headers(resp.headers)


async def test_cors_headers_on_answers_only_for_allowed_origins(edge: Edge) -> None:
    async with edge.http.get(f"{edge.base}/healthz", headers={"Origin": ORIGIN}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
    async with edge.http.get(f"{edge.base}/nowhere", headers={"Origin": "http://localhost:3000"}) as resp:
        assert resp.status == 404
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    async with edge.http.get(f"{edge.base}/healthz", headers={"Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_cors_headers_without_configured_origins(edge: Edge) -> None:
    app = edge_app.create_app(Settings.from_env({}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with edge.http.get(f"{base}/healthz", headers={"Origin": ORIGIN}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
            _assert_security_headers(resp.headers)
        headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        async with edge.http.options(f"{base}/v1/jobs", headers=headers) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
    finally:
        await runner.cleanup()


async def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send raw bytes; the status line and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    finally:
        writer.close()


async def test_declared_oversize_body_is_refused_before_it_is_sent(edge: Edge) -> None:
    # Content-Length says 20 MB; only 10 bytes follow. The answer must not wait for the rest.
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {20 * MB}\r\n\r\n".encode()
    )
    answer = await _raw(edge.port, head, b'{"user_id"', timeout=3.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"Content-Security-Policy" in answer
    upload_head = (
        b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {200 * MB}\r\n\r\n".encode()
    )
    answer = await _raw(edge.port, upload_head, b"--b\r\n", timeout=3.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer


async def test_chunked_body_is_refused_as_soon_as_it_passes_the_limit(edge: Edge) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        piece = b"x" * (256 * 1024)
        while sent < 40 * MB:
            sent += len(piece)
            yield piece

    headers = {"Content-Type": "application/json"}
    try:
        async with edge.http.post(f"{edge.base}/v1/jobs", data=chunks(), headers=headers) as resp:
            assert resp.status == 413
            body = await resp.json()
            assert "larger than" in body["message"]
    except aiohttp.ClientError:
        pass  # the server may close while the client is still sending; what matters is below
    assert sent < 40 * MB, "the edge read the whole oversize body"
    assert edge.jobs.jobs == {}
    # The edge reads and drops what was already on the wire (aiohttp's lingering close), then drops
    # the connection. Wait for that here: the fixture's shutdown would otherwise meet it still open
    # and wait out aiohttp's whole 10 s lingering time.
    await _all_connections_closed(edge)


async def _all_connections_closed(edge: Edge, timeout: float = 5.0) -> None:
    server = edge.runner.server
    assert server is not None
    async with asyncio.timeout(timeout):
        while any(handler.transport is not None for handler in server.connections):
            await asyncio.sleep(0.01)


async def test_every_json_route_refuses_a_wrong_content_type_with_415(edge: Edge) -> None:
    app_edge = edge_app.Edge(routes.build(edge_app.PROTO_MODULES), Settings.from_env({}).edge_max_body_bytes)
    body_routes = [b.route for b in app_edge.bound if b.builder.accepts_body]
    assert len(body_routes) >= 5
    for route in body_routes:
        path = route.template.source.replace("{job_id}", "0" * 32).replace("{user_id}", "u1")
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
        ):
            async with edge.http.request(
                route.verb, edge.base + path, data=b"{}", headers={"Content-Type": content_type}
            ) as resp:
                assert resp.status == 415, (route.name, content_type, await resp.text())
                _assert_security_headers(resp.headers)
    async with edge.http.post(f"{edge.base}/v1/uploads", json={}) as resp:
        assert resp.status == 415


async def test_gateway_internal_error_surfaces_its_error_id_without_internals(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with edge.http.get(f"{edge.base}/v1/jobs", params={"user_id": "boom"}) as resp:
        assert resp.status == 500
        body = await resp.json()
    error_id = body["error_id"]
    assert len(error_id) == 12
    assert error_id in body["message"]
    assert "RuntimeError" not in json.dumps(body) and "servicer bug" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)
    assert any(error_id in r.getMessage() for r in caplog.records), "the error id is not in the log"
    # The original API's envelope carries it too.
    legacy = {"job_id": "0" * 32, "user_id": "boom"}
    async with edge.http.post(f"{edge.base}/api/v1/flickr/jobs/status", json=legacy) as resp:
        assert resp.status >= 500  # the echo server has no LegacyService: UNIMPLEMENTED
        answer = await resp.json()
        assert answer["data"] is None and answer["error"]["code"].startswith("ERR_")
        assert answer["error"]["error_id"]


async def test_edge_made_5xx_carries_a_logged_error_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    # A gateway that is not there: the edge answers 503 itself.
    app = edge_app.create_app(Settings.from_env({"GATEWAY_ADDR": "127.0.0.1:9"}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/jobs/{'0' * 32}"
            async with http.get(url, headers={"grpc-timeout": "2S"}) as resp:
                assert resp.status in (503, 504)
                body = await resp.json()
                _assert_security_headers(resp.headers)
    finally:
        await runner.cleanup()
    assert any(body["error_id"] in r.getMessage() for r in caplog.records)
    assert "127.0.0.1:9" not in json.dumps(body)


FUZZ_BODIES: tuple[bytes, ...] = (
    b"{",
    b"null",
    b"[]",
    b'"a string"',
    b"\xff\xfe\xfa not utf-8",
    b'{"user_id": "\xc3\x28"}',
    b'{"user_id": "a\\u0000b", "method": "flickr.photos.search\\u0000"}',
    b'{"user_id": 5, "method": ["x"], "params": "nope", "meta": 7}',
    b'{"meta": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"params": {"../../etc/passwd": "x", "k": "\\ud800"}}',
    b'{"callback_url": "http://[::1", "callback_secret": "' + b"s" * 20 + b'"}',
    b'{"user_id": "' + "ü".encode() * 10_000 + b'"}',
)
FUZZ_PATHS: tuple[str, ...] = (
    "/v1/jobs/../../etc/passwd",
    "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
    "/v1/jobs/%00",
    "/v1/jobs/%ff%fe",
    "/v1/jobs/" + "a" * 4000,
    "/../../../etc/passwd",
    "/v1/jobs/x:cancel:cancel",
    "/api/v1/flickr/rest/../../../v1/jobs",
    "/docs/static/..%2F..%2Fpyproject.toml",
    "/docs/static/../../pyproject.toml",
)


async def test_hostile_input_never_produces_a_500(edge: Edge) -> None:
    statuses: list[int] = []
    for path in ("/v1/jobs", "/api/v1/flickr/rest", "/api/v1/flickr/jobs/status", "/v1/auth:start"):
        for body in FUZZ_BODIES:
            headers = {"Content-Type": "application/json"}
            async with edge.http.post(edge.base + path, data=body, headers=headers) as resp:
                text = await resp.read()
                statuses.append(resp.status)
                assert resp.status < 500 or resp.status in (501, 503), (path, body[:40], resp.status, text)
                assert b"Traceback" not in text
                _assert_security_headers(resp.headers)
    for raw_path in FUZZ_PATHS:
        head = f"GET {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        answer = await _raw(edge.port, head)
        code = int(answer.split(b" ", 2)[1])
        assert 400 <= code < 500, (raw_path, answer)
        assert b"pyproject" not in answer
    for name, value in (
        ("X-Big", "a" * 9000),  # over aiohttp's 8 KiB field limit: its parser answers 400
        ("X-Request-Id", "a" * 2000),
        ("X-Idempotency-Key", "é\u0000x"),
        ("grpc-timeout", "99999999999H"),
        ("traceparent", "00-zz-zz-zz"),
    ):
        try:
            async with edge.http.get(f"{edge.base}/v1/jobs?user_id=u1", headers={name: value}) as resp:
                assert resp.status < 500, (name, resp.status, await resp.text())
        except (aiohttp.ClientError, ValueError):
            pass  # the client itself refused to send it: nothing reached the edge
    head = b"GET /v1/jobs?user_id=u1 HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\r\nConnection: close\r\n\r\n"
    assert int((await _raw(edge.port, head)).split(b" ", 2)[1]) < 500
    head = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 200 + b"Connection: close\r\n\r\n"
    assert int((await _raw(edge.port, head)).split(b" ", 2)[1]) < 500
    assert 400 in statuses
