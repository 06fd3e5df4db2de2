"""Hostile input against the live stack (edge → gateway → MongoDB/Redis): a clear 4xx, nothing changed.

Every case is sent by a client holding a valid admin key (bound to every user), so
nothing is refused for want of a credential: the refusal must come from the input.
After each group, no job document and no queue entry may exist. The counts per
category are kept in CASES for the issue's closing note (test_case_counts prints them).

Free text is data: unicode in Flickr parameter values and in `meta` strings is
accepted (photo titles are unicode); identifiers (user_id, method, parameter names,
idempotency key) take ASCII only; NUL and other control characters are refused in
every string field.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from google.protobuf import json_format, struct_pb2

from common import signing
from common.settings import Settings
from edge import app as edge_app
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc, legacy_pb2, legacy_pb2_grpc
from gateway import validation
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings

VALID: dict[str, Any] = {"user_id": DEMO_USER, "method": "flickr.test.echo", "params": {"a": "1"}}
CALLBACK = {"callback_url": "https://hooks.example.com/x", "callback_secret": "s" * 20}


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


MALFORMED_JSON: tuple[bytes, ...] = (
    b"{",
    b'{"user_id": "demo-user",',
    b"\xff\xfe not utf-8",
    b"null",
    b"[]",
    b'"a string"',
    b"{} trailing",
    b'{"user_id": "demo-user", "user_id": ',
    b"",
)
WRONG_TYPES: tuple[dict[str, Any], ...] = (
    {**VALID, "user_id": 5},
    {**VALID, "method": ["flickr.test.echo"]},
    {**VALID, "params": "a=1"},
    {**VALID, "params": {"a": 1}},
    {**VALID, "params": {"a": None}},
    {**VALID, "meta": 7},
    {**VALID, "meta": [1, 2]},
    {**VALID, "priority": "PRIORITY_URGENT"},
    {**VALID, "target": True},
    {**VALID, "callback_url": {"u": 1}},
    {**VALID, "idempotency_key": 12.5},
)
HUGE_OR_DEEP_META: tuple[dict[str, Any], ...] = (
    {**VALID, "meta": {"blob": "x" * 20_000}},  # over 16 KiB as JSON
    {**VALID, "meta": {f"k{i}": i for i in range(3000)}},
    {**VALID, "meta": _nested(40)},  # small but deeper than meta may nest
    {**VALID, "meta": _nested(200)},  # deeper than protobuf's parser allows
)
# Identifiers refuse anything but their ASCII alphabet; every string field refuses NUL and controls.
HOSTILE_STRINGS = ("a\u0000b", "a\u001bb", "\u202eevil", "ü", "😀", "a\nb")
TEXT_STRINGS = ("a\u0000b", "a\u001bb", "a\u007fb")  # refused even in free text


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers < 16 and payloads < 2 MiB: enough here)."""
    length, size = b"", len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([number << 3 | 2]) + length + payload


def _struct_bytes(depth: int) -> bytes:
    """A google.protobuf.Struct `{"a": {"a": …}}` nested `depth` deep, serialized by hand."""
    inner = b""
    for _ in range(depth):
        value = _field(5, inner)  # Value.struct_value
        inner = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields entry
    return inner


def _string_field_cases() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for bad in HOSTILE_STRINGS:
        cases += [
            ("user_id", {**VALID, "user_id": bad}),
            ("method", {**VALID, "method": f"flickr.test.{bad}"}),
            ("params key", {**VALID, "params": {bad: "1"}}),
            ("idempotency_key", {**VALID, "idempotency_key": bad}),
            ("callback_url", {**VALID, **CALLBACK, "callback_url": f"https://hooks.example.com/{bad}"}),
        ]
    for bad in TEXT_STRINGS:
        cases += [
            ("params value", {**VALID, "params": {"text": bad}}),
            ("callback_secret", {**VALID, **CALLBACK, "callback_secret": "s" * 20 + bad}),
            ("meta string", {**VALID, "meta": {"note": bad}}),
            ("meta key", {**VALID, "meta": {bad: "x"}}),
        ]
    return cases


TRAVERSAL_METHODS: tuple[str, ...] = (
    "../../etc/passwd",
    "flickr.photos/../../admin",
    "flickr.photos.search/..",
    "flickr..photos.search",
    "flickr.photos.search%2F..%2F..",
    "flickr.photos.search?method=flickr.auth",
    "/flickr.photos.search",
    "flickr.photos.search\\..\\x",
)
CASES: dict[str, int] = {}
LEGACY_FIELDS = set(legacy_pb2.LegacySubmitRequest.DESCRIPTOR.fields_by_name)


def _count(category: str, n: int = 1) -> None:
    CASES[category] = CASES.get(category, 0) + n


@dataclass
class Live:
    stack: Stack
    edge: str
    http: aiohttp.ClientSession
    jobs: jobs_pb2_grpc.JobServiceAsyncStub  # credential-less: metadata per call
    channel: grpc.aio.Channel
    legacy: legacy_pb2_grpc.LegacyServiceAsyncStub
    redis: Any

    @property
    def auth(self) -> dict[str, str]:
        return self.stack.auth_headers

    @property
    def grpc_auth(self) -> list[tuple[str, str]]:
        return [(k.lower(), v) for k, v in self.auth.items()]

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **self.auth, **(headers or {})}
        async with self.http.post(self.edge + path, data=body, headers=sent) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None

    async def assert_nothing_changed(self) -> None:
        assert await self.stack.mongo.jobs.count_documents({}) == 0
        streams = [k async for k in self.redis.scan_iter(match="fh:q:*")]
        assert [await self.redis.xlen(s) for s in streams] == [0] * len(streams)


@pytest_asyncio.fixture
async def live(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Live]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        channel = stack.unauthenticated_channel()
        runner = web.AppRunner(edge_app.create_app(Settings.from_env({}), channel), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Live(
                    stack,
                    f"http://127.0.0.1:{runner.addresses[0][1]}",
                    http,
                    jobs_pb2_grpc.JobServiceStub(channel),
                    channel,
                    legacy_pb2_grpc.LegacyServiceStub(channel),
                    redis,
                )
        finally:
            await runner.cleanup()
            await channel.close()


def _is_clear_4xx(status: int, body: Any, *, legacy: bool = False) -> None:
    assert 400 <= status < 500 and status != 401, (status, body)
    if legacy:
        assert body["data"] is None and body["error"]["code"].startswith("ERR_"), body
    else:
        assert set(body) >= {"code", "message", "details"} and body["message"], body


async def _grpc_refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
        err.value.code(),
        err.value.details(),
    )
    return err.value


async def test_the_valid_request_these_cases_start_from_is_accepted(live: Live) -> None:
    # The control: without it, every case below could pass because of something else entirely.
    unicode_text = {**VALID, "params": {"title": "Zürich 😀 ✓"}, "meta": {"note": "é"}}
    status, body = await live.post("/v1/jobs", json.dumps(unicode_text).encode())
    assert status == 200, body
    await live.stack.mongo.jobs.delete_many({})
    await live.redis.flushall()


async def test_malformed_json_and_wrong_types_are_400_on_both_apis(live: Live) -> None:
    for path in ("/v1/jobs", "/api/v1/flickr/rest"):
        legacy = path.startswith("/api")
        for body in MALFORMED_JSON:
            status, answer = await live.post(path, body)
            _is_clear_4xx(status, answer, legacy=legacy)
            _count("malformed JSON")
        for fields in WRONG_TYPES:
            if legacy and (fields["params"] == {"a": 1} or not set(fields) <= LEGACY_FIELDS):
                continue  # numbers were Flickr parameters in the original API; unknown fields are ignored
            status, answer = await live.post(path, json.dumps(fields).encode())
            assert status == 400, (fields, answer)
            _is_clear_4xx(status, answer, legacy=legacy)
            _count("wrong types")
    await live.assert_nothing_changed()


async def test_huge_and_deeply_nested_meta_is_400_over_rest_and_grpc(live: Live) -> None:
    for fields in HUGE_OR_DEEP_META:
        for path in ("/v1/jobs", "/api/v1/flickr/rest"):
            status, answer = await live.post(path, json.dumps(fields).encode())
            assert status == 400, (path, str(fields)[:80], answer)
            _is_clear_4xx(status, answer, legacy=path.startswith("/api"))
            _count("huge/deep meta")
    meta = struct_pb2.Struct()
    json_format.ParseDict(_nested(validation.MAX_META_DEPTH + 1), meta)  # decodable, too deep for meta
    request = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", meta=meta)
    err = await _grpc_refused(live.jobs.SubmitJob(request, metadata=live.grpc_auth))
    assert "meta" in (err.details() or "")
    # Deeper than protobuf decodes (it cannot even be built here): hand-made bytes.
    submit: Any = live.channel.unary_unary("/flickrhub.v1.JobService/SubmitJob")
    head = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo").SerializeToString()
    for depth in (60, 500):
        await _grpc_refused(submit(head + _field(7, _struct_bytes(depth)), metadata=live.grpc_auth))
    _count("huge/deep meta", 3)
    await live.assert_nothing_changed()


async def test_nul_controls_and_unicode_in_every_string_field_are_400_over_rest_and_grpc(live: Live) -> None:
    for field_name, fields in _string_field_cases():
        status, answer = await live.post("/v1/jobs", json.dumps(fields).encode())
        assert status == 400, (field_name, fields, answer)
        _is_clear_4xx(status, answer)
        request = jobs_pb2.SubmitJobRequest()
        json_format.ParseDict(fields, request)
        await _grpc_refused(live.jobs.SubmitJob(request, metadata=live.grpc_auth))
        _count("NUL/control/unicode in string fields", 2)
    lookups: tuple[tuple[str, dict[str, Any] | None], ...] = (
        ("/v1/jobs/{}", None),
        ("/v1/jobs?user_id={}", None),
        ("/api/v1/flickr/jobs/status", {"job_id": "{}", "user_id": DEMO_USER}),
    )
    for path, template in lookups:
        for bad in ("a%00b", "%C3%BC", "..%2F..%2Fetc"):
            if template is None:
                async with live.http.get(live.edge + path.format(bad), headers=live.auth) as resp:
                    _is_clear_4xx(resp.status, await resp.json())
            else:
                text = bad.replace("%00", "\u0000")
                body = json.dumps({k: v.format(text) for k, v in template.items()})
                status, answer = await live.post(path, body.encode())
                _is_clear_4xx(status, answer, legacy=True)
            _count("NUL/control/unicode in string fields")
    await live.assert_nothing_changed()


async def test_path_traversal_in_method_names_is_400_on_every_submission_route(live: Live) -> None:
    for method in TRAVERSAL_METHODS:
        status, answer = await live.post("/v1/jobs", json.dumps({**VALID, "method": method}).encode())
        assert status == 400 and "method" in json.dumps(answer), (method, answer)
        legacy = {"method": method, "params": {}, "user_id": DEMO_USER}
        status, answer = await live.post("/api/v1/flickr/rest", json.dumps(legacy).encode())
        _is_clear_4xx(status, answer, legacy=True)
        await _grpc_refused(
            live.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method=method), metadata=live.grpc_auth
            )
        )
        await _grpc_refused(
            live.legacy.SubmitLegacyJob(
                legacy_pb2.LegacySubmitRequest(user_id=DEMO_USER, method=method), metadata=live.grpc_auth
            )
        )
        _count("path traversal in method names", 4)
    await live.assert_nothing_changed()


async def _raw_http(live: Live, head: bytes) -> bytes:
    host, port = live.edge.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    answer: bytes = await reader.read(65536)
    writer.close()
    return answer


def _request(auth: bytes, extra: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + extra
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


async def test_header_injection_is_refused_and_never_echoed(live: Live) -> None:
    body = json.dumps(VALID).encode()
    auth = f"Authorization: {live.auth['Authorization']}\r\n".encode()
    # Values with bytes a header may not hold: NUL, bare CR, non-ASCII in headers that become
    # gRPC metadata. Each is a 400 and no job.
    for extra in (
        b"X-Idempotency-Key: k\x00x",
        b"X-Idempotency-Key: k\rX-Injected: 1",
        b"X-Idempotency-Key: k\xc3\xbc",
        b"X-Request-Id: r\x00x",
        b"X-Api-Key: fhk_\x00",
        b"Authorization: Bearer fhk_a\x00b",
    ):
        answer = await _raw_http(live, _request(auth, extra, body))
        code = int(answer.split(b" ", 2)[1])
        assert 400 <= code < 500, (extra, answer[:300])
        assert b"X-Injected" not in answer.split(b"\r\n\r\n", 1)[0]
        _count("header injection")
    await live.assert_nothing_changed()
    # CRLF in a value ends the header line: the "injected" line is merely another request header,
    # never echoed into the answer (X-Request-Id is echoed only when it is a plain token).
    for extra in (b"X-Request-Id: r1\r\nSet-Cookie: a=b", b"X-Request-Id: <script>\r\nX-Injected: 1"):
        answer = await _raw_http(live, _request(auth, extra, body))
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert b"Set-Cookie" not in head and b"X-Injected" not in head, head
        _count("header injection")


async def test_missing_expired_forged_and_replayed_credentials_change_nothing(live: Live) -> None:
    assert live.stack.keys is not None
    keys = live.stack.keys
    body = json.dumps(VALID).encode()
    path = "/v1/jobs"

    def signed(secret: str, *, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
        return signing.sign_headers(keys.client_key_id, secret, "POST", path, body=body, now=now, nonce=nonce)

    replay = signed(keys.client_signing_secret)
    attempts: list[tuple[str, dict[str, str]]] = [
        ("missing", {}),
        ("forged bearer", {"Authorization": f"Bearer fhk_{keys.client_key_id}_{'x' * 43}"}),
        ("forged x-api-key", {"x-api-key": f"fhk_{keys.admin_key_id}_{'A' * 43}"}),
        ("malformed bearer", {"Authorization": "Bearer not-a-key"}),
        ("other scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
        ("expired signature", signed(keys.client_signing_secret, now=time.time() - 3600)),
        ("future signature", signed(keys.client_signing_secret, now=time.time() + 3600)),
        ("forged signature", signed("not-the-signing-secret")),
        ("signature without nonce", {k: v for k, v in replay.items() if k != signing.HEADER_NONCE}),
    ]
    for label, headers in attempts:
        sent = {"Content-Type": "application/json", **headers}
        async with live.http.post(live.edge + path, data=body, headers=sent) as resp:
            assert resp.status == 401, (label, await resp.text())
            assert set(await resp.json()) >= {"code", "message", "details"}
        _count("missing/expired/forged/replayed credentials")
    await live.assert_nothing_changed()
    # Replayed: the first use is a job, the second changes nothing.
    sent = {"Content-Type": "application/json", **replay}
    async with live.http.post(live.edge + path, data=body, headers=sent) as resp:
        assert resp.status == 200, await resp.text()
    async with live.http.post(live.edge + path, data=body, headers=sent) as resp:
        assert resp.status == 401 and "replayed" in (await resp.json())["message"]
    assert await live.stack.mongo.jobs.count_documents({}) == 1
    _count("missing/expired/forged/replayed credentials")


async def test_oversize_rest_bodies_are_413_and_change_nothing(live: Live) -> None:
    huge = json.dumps({**VALID, "meta": {"x": "y" * (11 * 1024 * 1024)}}).encode()
    for path in ("/v1/jobs", "/api/v1/flickr/rest", "/v1/admin/keys"):
        status, answer = await live.post(path, huge)
        assert status == 413, (path, answer)
        _count("oversize bodies")
    oversize_grpc = jobs_pb2.SubmitJobRequest(
        user_id=DEMO_USER, method="flickr.test.echo", params={"a": "b" * (5 * 1024 * 1024)}
    )
    await _grpc_refused(live.jobs.SubmitJob(oversize_grpc, metadata=live.grpc_auth))
    _count("oversize bodies")
    await live.assert_nothing_changed()


def test_every_string_field_of_a_submission_has_hostile_cases() -> None:
    request = jobs_pb2.SubmitJobRequest.DESCRIPTOR
    strings = {f.name for f in request.fields if f.type == f.TYPE_STRING or f.message_type is not None}
    covered = {name.split()[0] for name, _ in _string_field_cases()}
    assert strings == covered, strings ^ covered
    # With -s, the counts per category of the tests above (for the note).
    print(CASES)
