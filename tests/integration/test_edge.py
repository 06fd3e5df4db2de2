"""The REST edge against a real grpc.aio server, over real HTTP on TCP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from common import telemetry
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
from tests.helpers.echo_servicer import EchoJobs, start_server

SPANS = InMemorySpanExporter()
telemetry.setup_tracing("edge-test", extra=SPANS)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class Stack:
    base: str
    http: aiohttp.ClientSession
    jobs: EchoJobs
    health: object
    channel: grpc.aio.Channel
    grpc_port: int


async def _start_edge(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    server, grpc_port, jobs, health = await start_server()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    runner, base = await _start_edge(edge_app.create_app(Settings.from_env({}), channel))
    async with aiohttp.ClientSession() as http:
        yield Stack(base, http, jobs, health, channel, grpc_port)
    await runner.cleanup()
    await channel.close()
    await server.stop(None)


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await resp.read())
    return body


async def _submit(stack: Stack, **body: object) -> dict[str, Any]:
    payload = {"user_id": "u1", "method": "flickr.photos.search", **body}
    async with stack.http.post(f"{stack.base}/v1/jobs", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        return await _json(resp)


# -- happy paths -------------------------------------------------------------------------------


async def test_submitted_job_comes_back_the_same_over_rest_and_grpc(stack: Stack) -> None:
    submitted = await _submit(stack, params={"text": "cats"}, priority="PRIORITY_HIGH", unknown_field=1)
    assert submitted["state"] == "JOB_STATE_QUEUED"
    async with stack.http.get(f"{stack.base}/v1/jobs/{submitted['job_id']}") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        over_rest = await _json(resp)
    over_grpc = await jobs_pb2_grpc.JobServiceStub(stack.channel).GetJob(
        jobs_pb2.GetJobRequest(job_id=submitted["job_id"])
    )
    assert over_rest["job_id"] == over_grpc.job_id == submitted["job_id"]
    assert over_rest["params"] == dict(over_grpc.params) == {"text": "cats"}
    assert over_rest["priority"] == "PRIORITY_HIGH"
    # proto field names, unpopulated scalars printed, unset messages omitted
    assert over_rest["from_cache"] is False
    assert over_rest["attempts"] == 0
    assert "error" not in over_rest
    assert over_rest["created_at"].endswith("Z")


async def test_a_grpc_error_has_the_same_code_over_rest_and_grpc(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs/missing") as resp:
        assert resp.status == 404
        body = await _json(resp)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_pb2_grpc.JobServiceStub(stack.channel).GetJob(jobs_pb2.GetJobRequest(job_id="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert body["message"] == caught.value.details()
    assert body["details"] == []


async def test_path_variables_are_url_decoded(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs/a%2Fb%20c") as resp:
        assert resp.status == 404
        assert (await _json(resp))["message"] == "job a/b c not found"


async def test_path_field_wins_over_the_body(stack: Stack) -> None:
    job = await _submit(stack)
    url = f"{stack.base}/v1/jobs/{job['job_id']}:cancel"
    async with stack.http.post(url, json={"job_id": "someone-else"}) as resp:
        assert resp.status == 200
        body = await _json(resp)
    assert body["job_id"] == job["job_id"]
    assert body["state"] == "JOB_STATE_CANCELLED"


async def test_cancel_accepts_an_empty_body_because_every_field_is_in_the_path(stack: Stack) -> None:
    job = await _submit(stack)
    async with stack.http.post(f"{stack.base}/v1/jobs/{job['job_id']}:cancel") as resp:
        assert resp.status == 200
    async with stack.http.post(f"{stack.base}/v1/jobs/{job['job_id']}:cancel") as resp:
        assert resp.status == 400  # FAILED_PRECONDITION
        assert (await _json(resp))["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]


async def test_query_string_fills_the_request(stack: Stack) -> None:
    await _submit(stack, method="flickr.a")
    await _submit(stack, method="flickr.b")
    await _submit(stack, user_id="u2")
    url = f"{stack.base}/v1/jobs?user_id=u1&state=JOB_STATE_QUEUED&page_size=1&ignored=1"
    async with stack.http.get(url) as resp:
        body = await _json(resp)
    assert [j["method"] for j in body["jobs"]] == ["flickr.b"]
    assert body["next_page_token"] == ""
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=u1&method=flickr.a&state=1") as resp:
        assert [j["method"] for j in (await _json(resp))["jobs"]] == ["flickr.a"]


async def test_a_scalar_given_twice_in_the_query_is_rejected(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=a&user_id=b") as resp:
        assert resp.status == 400
        body = await _json(resp)
    assert body["code"] == 3
    assert "user_id" in body["message"]


async def test_admin_queue_stats_render_int64_as_strings(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/admin/queues?top_tokens=1") as resp:
        body = await _json(resp)
    assert body["active_tokens"] == "2"
    assert body["work_streams"][0] == {"target": "rest", "length": "10", "pending": "1", "lag": "9"}
    assert len(body["token_queues"]) == 1
    assert body["dead_letters"] == "0"


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"user_id": 5, "method": "m"}', "user_id"),
        (b'{"params": "x"}', "params"),
        (b'{"meta": [1]}', "meta"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_json_is_a_400_with_a_clear_message(stack: Stack, raw: bytes, fragment: str) -> None:
    headers = {"Content-Type": "application/json"}
    async with stack.http.post(f"{stack.base}/v1/jobs", data=raw, headers=headers) as resp:
        assert resp.status == 400
        body = await _json(resp)
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert fragment in body["message"]
    assert stack.jobs.jobs == {}


async def test_a_missing_body_on_submit_is_a_400_not_a_200(stack: Stack) -> None:
    async with stack.http.post(f"{stack.base}/v1/jobs") as resp:
        assert resp.status == 400
        assert "body is required" in (await _json(resp))["message"]
    async with stack.http.post(
        f"{stack.base}/v1/jobs", data=b"", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400


async def test_a_body_on_a_method_without_body_is_a_400(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs/x", data=b'{"a":1}') as resp:
        assert resp.status == 400
        assert "takes no request body" in (await _json(resp))["message"]

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a":1}'

    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=u1", data=chunks()) as resp:
        assert resp.status == 400


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
async def test_only_json_bodies_are_accepted(stack: Stack, content_type: str) -> None:
    body = b'{"user_id": "u1", "method": "flickr.x"}'
    async with stack.http.post(
        f"{stack.base}/v1/jobs", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 415
        assert resp.content_type == "application/json"
        assert "application/json" in (await _json(resp))["message"]
    assert stack.jobs.jobs == {}


async def test_json_with_a_utf8_charset_is_accepted(stack: Stack) -> None:
    body = json.dumps({"user_id": "ü", "method": "flickr.x"}).encode()
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    async with stack.http.post(f"{stack.base}/v1/jobs", data=body, headers=headers) as resp:
        assert resp.status == 200
    assert [j.user_id for j in stack.jobs.jobs.values()] == ["ü"]


async def test_a_body_over_10mb_is_refused_from_content_length_without_reading_it(stack: Stack) -> None:
    host, port = stack.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20000000\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_a_chunked_body_over_10mb_is_refused_while_reading(stack: Stack) -> None:
    piece = b" " * (1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield piece

    headers = {"Content-Type": "application/json"}
    try:
        async with stack.http.post(f"{stack.base}/v1/jobs", data=chunks(), headers=headers) as resp:
            assert resp.status == 413
            assert (await _json(resp))["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    except aiohttp.ClientOSError:  # pragma: no cover - the server may close before the upload ends
        pass
    assert stack.jobs.jobs == {}


async def test_unknown_path_is_a_json_404(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v2/nothing") as resp:
        assert resp.status == 404
        assert (await _json(resp))["code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert resp.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("POST", "/v1/jobs/abc", "GET"),
        ("GET", "/v1/jobs/abc:cancel", "POST"),
        ("PUT", "/v1/admin/queues", "GET"),
    ],
)
async def test_wrong_verb_is_a_405_with_allow(stack: Stack, method: str, path: str, allow: str) -> None:
    async with stack.http.request(method, f"{stack.base}{path}") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == allow
        assert (await _json(resp))["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


# -- rich errors -------------------------------------------------------------------------------


async def test_bad_request_details_render_as_a_400_not_a_500(stack: Stack) -> None:
    async with stack.http.post(f"{stack.base}/v1/jobs", json={"user_id": "u1"}) as resp:
        assert resp.status == 400
        body = await _json(resp)
    assert body["code"] == 3
    assert body["message"] == "method is required"
    by_type = {d["@type"]: d for d in body["details"]}
    assert by_type["type.googleapis.com/google.rpc.BadRequest"]["field_violations"] == [
        {"field": "method", "description": "must not be empty"}
    ]
    assert by_type["type.googleapis.com/google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"


async def test_retry_info_sets_retry_after_rounded_up(stack: Stack) -> None:
    async with stack.http.post(f"{stack.base}/v1/jobs", json={"user_id": "throttled", "method": "m"}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        body = await _json(resp)
    assert body["details"][0] == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retry_delay": "1.500s",
    }
    assert body["details"][1]["violations"] == [{"subject": "client:c1", "description": "1000 pending"}]


async def test_a_detail_of_unknown_type_is_still_shown(stack: Stack) -> None:
    async with stack.http.post(f"{stack.base}/v1/jobs", json={"user_id": "exotic", "method": "m"}) as resp:
        assert resp.status == 400
        body = await _json(resp)
    assert body["details"] == [{"@type": "type.googleapis.com/example.Unknown", "value": "CAE="}]


async def test_a_servicer_crash_is_a_500_json(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=boom") as resp:
        assert resp.status == 500
        assert (await _json(resp))["code"] == grpc.StatusCode.UNKNOWN.value[0]


async def test_unreachable_gateway_is_a_503_json() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{dead}")
    runner, base = await _start_edge(edge_app.create_app(Settings.from_env({}), channel))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/jobs", json={"user_id": "u", "method": "m"}) as resp:
                assert resp.status == 503
                body = await _json(resp)
            error_id = body.pop("error_id")  # every 5xx the edge makes carries a logged error id
            assert len(error_id) == 12
            assert body == {"code": 14, "message": "gateway unavailable, retry later", "details": []}
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
        await channel.close()


# -- headers, deadline, tracing ---------------------------------------------------------------------


async def test_only_allow_listed_headers_become_metadata(stack: Stack) -> None:
    job = await _submit(stack)
    headers = {
        "Authorization": "Bearer t0k",
        "X-Idempotency-Key": "idem-1",
        "X-Api-Key": "k",
        "X-Signature": "sig",
        "X-Timestamp": "1700000000",
        "X-Nonce": "n1",
        "X-Request-Id": "req-42",
        "X-Forwarded-For": "203.0.113.9",
        "Cookie": "session=secret",
        "X-Internal-Admin": "yes",
    }
    async with stack.http.get(f"{stack.base}/v1/jobs/{job['job_id']}", headers=headers) as resp:
        assert resp.headers["X-Request-Id"] == "req-42"
        received = (await _json(resp))["meta"]["received_metadata"]
    assert received["authorization"] == "Bearer t0k"
    assert received["x-idempotency-key"] == "idem-1"
    assert (received["x-api-key"], received["x-signature"]) == ("k", "sig")
    assert (received["x-timestamp"], received["x-nonce"]) == ("1700000000", "n1")
    assert received["x-request-id"] == "req-42"
    assert received["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert "cookie" not in received
    assert "x-internal-admin" not in received


async def test_every_response_gets_a_fresh_request_id_when_none_came(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=u1") as resp:
        request_id = resp.headers["X-Request-Id"]
    assert len(request_id) == 36
    assert stack.jobs.last_metadata["x-request-id"] == request_id
    assert stack.jobs.last_metadata["x-forwarded-for"] == "127.0.0.1"


async def test_non_ascii_header_value_is_a_400(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=u1", headers={"X-Nonce": "caf\u00e9"}) as resp:
        assert resp.status == 400


async def test_grpc_timeout_becomes_the_call_deadline(stack: Stack) -> None:
    body = {"user_id": "u1", "method": "flickr.test.slow"}
    async with stack.http.post(f"{stack.base}/v1/jobs", json=body, headers={"Grpc-Timeout": "100m"}) as resp:
        assert resp.status == 504
        assert (await _json(resp))["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=u1", headers={"Grpc-Timeout": "soon"}) as resp:
        assert resp.status == 400
        assert "grpc-timeout" in (await _json(resp))["message"]


async def test_server_span_continues_the_incoming_trace_and_is_what_the_gateway_sees(stack: Stack) -> None:
    SPANS.clear()
    body = {"user_id": "u1", "method": "flickr.x"}
    async with stack.http.post(
        f"{stack.base}/v1/jobs", json=body, headers={"traceparent": TRACEPARENT}
    ) as resp:
        assert (await _json(resp))["trace_id"] == TRACE_ID
    spans = [s for s in SPANS.get_finished_spans() if s.name == "POST /v1/jobs"]
    assert len(spans) == 1
    span = spans[0]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    # The gateway got the edge span's context, not the client's span id.
    sent = stack.jobs.last_metadata["traceparent"]
    assert sent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


async def test_error_spans_are_marked(stack: Stack) -> None:
    SPANS.clear()
    async with stack.http.get(f"{stack.base}/v1/jobs?user_id=boom") as resp:
        assert resp.status == 500
    (span,) = [s for s in SPANS.get_finished_spans() if s.name == "GET /v1/jobs"]
    assert not span.status.is_ok


# -- streaming ----------------------------------------------------------------------------------


async def test_watch_streams_ndjson_results(stack: Stack) -> None:
    job = await _submit(stack)
    async with stack.http.get(f"{stack.base}/v1/jobs/{job['job_id']}:watch") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        lines = [json.loads(line) async for line in resp.content]
    assert [line["result"]["state"] for line in lines] == [
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_COMPLETED",
    ]
    assert all(line["result"]["job_id"] == job["job_id"] for line in lines)


async def test_watch_of_an_unknown_job_is_a_plain_404(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs/nope:watch") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"


async def test_an_error_mid_stream_ends_with_an_error_line(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/jobs/fail-midway:watch") as resp:
        assert resp.status == 200
        lines = [json.loads(line) async for line in resp.content]
    assert lines[0]["result"]["state"] == "JOB_STATE_RUNNING"
    assert lines[1] == {"error": {"code": 14, "message": "worker lost", "details": []}}


async def test_client_disconnect_cancels_the_watch_call(stack: Stack) -> None:
    resp = await stack.http.get(f"{stack.base}/v1/jobs/forever:watch")
    first = await resp.content.readline()
    assert json.loads(first)["result"]["job_id"] == "forever"
    resp.close()
    await asyncio.wait_for(stack.jobs.watch_cancelled.wait(), 5)


# -- health and metrics ---------------------------------------------------------------------------


async def test_readyz_follows_the_gateway_health_service(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/readyz") as resp:
        assert resp.status == 200
        assert (await _json(resp))["status"] == "SERVING"
    await stack.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # type: ignore[attr-defined]
    async with stack.http.get(f"{stack.base}/readyz") as resp:
        assert resp.status == 503
    async with stack.http.get(f"{stack.base}/healthz") as resp:
        assert resp.status == 200


async def test_requests_are_counted_by_route_and_code(stack: Stack) -> None:
    def count(route: str, code: str) -> float:
        return (
            REGISTRY.get_sample_value("flickrhub_edge_requests_total", {"route": route, "code": code}) or 0.0
        )

    before_ok = count("GET /v1/jobs/{job_id}", "404")
    before_unmatched = count("unmatched", "404")
    async with stack.http.get(f"{stack.base}/v1/jobs/none"):
        pass
    async with stack.http.get(f"{stack.base}/nowhere"):
        pass
    assert count("GET /v1/jobs/{job_id}", "404") == before_ok + 1
    assert count("unmatched", "404") == before_unmatched + 1
    assert REGISTRY.get_sample_value(
        "flickrhub_edge_request_seconds_count", {"route": "GET /v1/jobs/{job_id}"}
    )


# -- run(): the process entry point ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_run_serves_metrics_and_drains_in_flight_requests_on_sigterm() -> None:
    server, grpc_port, jobs, _ = await start_server()
    port, metrics_port = _free_port(), _free_port()
    settings = Settings.from_env(
        {},
        gateway_addr=f"127.0.0.1:{grpc_port}",
        edge_port=port,
        edge_metrics_port=metrics_port,
        shutdown_grace_s=5.0,
    )
    task = asyncio.create_task(edge_app.run(settings))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert "flickrhub_edge_requests_total" in await resp.text()
            slow = asyncio.create_task(
                http.post(f"{base}/v1/jobs", json={"user_id": "u", "method": "flickr.test.slow"})
            )
            await asyncio.sleep(0.3)  # the slow submission is in flight
            os.kill(os.getpid(), signal.SIGTERM)
            resp = await slow
            assert resp.status == 200
            resp.release()
            await asyncio.wait_for(task, 10)
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{base}/healthz")
        assert len(jobs.jobs) == 1
    finally:
        if not task.done():
            task.cancel()
        await server.stop(None)
