"""One trace per job: edge → gateway → mover → worker → cache → Flickr HTTP (in-memory exporter).

The cache step: the worker's lookup and store spans, each with the cache service's server span
for that operation (the operations travel in batches shared by many jobs; each carries its job's
trace context, and the service records it in that trace)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common import telemetry
from common.settings import Settings
from edge.app import create_app
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings

EXPORTER = InMemorySpanExporter()


@pytest_asyncio.fixture
async def traced(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any, cache_redis: Any
) -> AsyncIterator[tuple[Stack, str]]:
    telemetry.setup_tracing("tests", extra=EXPORTER)
    EXPORTER.clear()
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        edge_settings = Settings.from_env(
            env={}, **{**stack.settings.__dict__, "gateway_addr": f"127.0.0.1:{stack.gateway.port}"}
        )
        runner = web.AppRunner(create_app(edge_settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield stack, f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


def _by_name(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r} among {sorted({s.name for s in spans})}"
    return found[0]


def _is_ancestor(spans: list[ReadableSpan], ancestor: ReadableSpan, span: ReadableSpan) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_one_trace_follows_a_job_through_every_hop(traced: tuple[Stack, str]) -> None:
    stack, edge = traced
    body = {"user_id": DEMO_USER, "method": "flickr.photos.getInfo", "params": {"photo_id": "4242"}}
    async with aiohttp.ClientSession(headers=stack.auth_headers) as http:
        async with http.post(f"{edge}/v1/jobs", json=body) as resp:
            assert resp.status == 200, await resp.text()
            submitted = await resp.json()
        for _ in range(200):
            async with http.get(f"{edge}/v1/jobs/{submitted['job_id']}") as resp:
                job = await resp.json()
            if job["state"] == "JOB_STATE_COMPLETED":
                break
            await asyncio.sleep(0.05)
    assert job["state"] == "JOB_STATE_COMPLETED"
    await asyncio.sleep(0.2)
    trace_id = int(submitted["trace_id"], 16)
    spans = [s for s in EXPORTER.get_finished_spans() if s.context.trace_id == trace_id]
    edge_span = _by_name(spans, "POST /v1/jobs")
    gateway = _by_name(spans, "/flickrhub.v1.JobService/SubmitJob")
    enqueue = _by_name(spans, telemetry.SPAN_ENQUEUE)
    move = _by_name(spans, telemetry.SPAN_MOVE)
    execute = _by_name(spans, telemetry.SPAN_EXECUTE)
    lookup = _by_name(spans, telemetry.SPAN_CACHE_LOOKUP)
    # The worker batches its cache operations (one ExchangeStream message for many jobs); the service
    # records each operation's side as a server span whose parent is that job's lookup span.
    cache_server = _by_name(spans, telemetry.SPAN_CACHE_SERVE_GET)
    store = _by_name(spans, telemetry.SPAN_CACHE_STORE)
    cache_store = _by_name(spans, telemetry.SPAN_CACHE_SERVE_PUT)
    flickr = _by_name(spans, telemetry.SPAN_FLICKR_CALL)
    http_calls = [
        s
        for s in spans
        if s.name.startswith("POST") and s is not edge_span and _is_ancestor(spans, flickr, s)
    ]
    assert http_calls, "the Flickr HTTP call has no span of its own"
    assert _is_ancestor(spans, edge_span, gateway)
    assert _is_ancestor(spans, gateway, enqueue)
    assert move.parent is not None and move.parent.span_id == enqueue.context.span_id
    assert execute.parent is not None and execute.parent.span_id == move.context.span_id
    assert _is_ancestor(spans, execute, lookup) and _is_ancestor(spans, execute, store)
    assert cache_server.parent is not None and cache_server.parent.span_id == lookup.context.span_id
    assert cache_store.parent is not None and cache_store.parent.span_id == store.context.span_id
    assert cache_server.kind == cache_store.kind == SpanKind.SERVER
    assert (
        cache_server.attributes is not None
        and cache_server.attributes[telemetry.ATTR_CACHE_OUTCOME] == "miss"
    )
    assert (
        cache_store.attributes is not None
        and cache_store.attributes[telemetry.ATTR_CACHE_OUTCOME] == "stored"
    )
    assert _is_ancestor(spans, execute, flickr)
    assert execute.attributes is not None and execute.attributes[telemetry.ATTR_JOB_ID] == submitted["job_id"]
