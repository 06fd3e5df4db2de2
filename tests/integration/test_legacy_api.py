"""The original FlickrHub API end to end: edge → gateway → mover → worker → sandbox, webhooks included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from common import urlguard
from common.settings import Settings
from edge.app import create_app
from tests.e2e.webhook_receiver import Receiver
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from worker import webhook_signature as webhook

SECRET = "legacy-callback-secret-0001"


@pytest_asyncio.fixture
async def legacy(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any, cache_redis: Any
) -> AsyncIterator[tuple[Stack, str, aiohttp.ClientSession]]:
    # rebind.test: a public answer at submission (the gateway's view of DNS in this test).
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        webhook_host_overrides="rebind.test=93.184.216.34,private.test=10.0.0.9",
    )
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
            # The original's clients move over by adding a credential: every call here presents one.
            async with aiohttp.ClientSession(headers=stack.auth_headers) as http:
                yield stack, f"http://127.0.0.1:{runner.addresses[0][1]}", http
        finally:
            await runner.cleanup()


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def _wait_final(http: aiohttp.ClientSession, edge: str, job_id: str) -> dict[str, Any]:
    for _ in range(300):
        status, body = await _post(
            http, f"{edge}/api/v1/flickr/jobs/status", {"job_id": job_id, "user_id": DEMO_USER}
        )
        assert status == 200, body
        if body["data"]["state"] in ("completed", "failed"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_legacy_submit_and_status_in_the_original_shapes(
    legacy: tuple[Stack, str, aiohttp.ClientSession],
) -> None:
    stack, edge, http = legacy
    body = {
        "method": "flickr.photos.getInfo",
        "params": {"photo_id": 4242, "extras": "tags"},
        "user_id": DEMO_USER,
        "target": "rest",
        "meta": {"ref": "abc"},
    }
    async with http.post(f"{edge}/api/v1/flickr/rest", json=body, headers={"X-Request-Id": "req-1"}) as resp:
        assert resp.status == 202, await resp.text()
        submitted = await resp.json()
    assert submitted["request_id"] == "req-1" and submitted["error"] is None
    job_id = submitted["data"]["job_id"]
    answer = await _wait_final(http, edge, job_id)
    assert answer["error"] is None
    data = answer["data"]
    assert set(data) == {"id", "state", "returnvalue", "failedReason", "queue"}
    assert data["id"] == job_id and data["state"] == "completed" and data["queue"] == "flickr_rest"
    assert data["failedReason"] is None
    assert data["returnvalue"]["from_cache"] is False
    assert data["returnvalue"]["flickr"]["stat"] == "ok"
    doc = await stack.store.get(job_id)
    assert doc is not None and doc["api"] == "legacy" and doc["params"]["photo_id"] == "4242"


async def test_legacy_errors_use_the_original_codes(legacy: tuple[Stack, str, aiohttp.ClientSession]) -> None:
    _stack, edge, http = legacy
    rest, status_url = f"{edge}/api/v1/flickr/rest", f"{edge}/api/v1/flickr/jobs/status"
    status, body = await _post(http, rest, {"method": "flickr.photos.search", "user_id": "nobody"})
    assert (status, body["error"]["code"]) == (404, "ERR_TOKEN_NOT_FOUND") and body["data"] is None
    status, body = await _post(http, rest, {"method": "not a method", "user_id": DEMO_USER})
    assert (status, body["error"]["code"]) == (400, "ERR_INVALID_REQUEST")
    assert body["error"]["details"][0]["field"] == "method"
    status, body = await _post(
        http, rest, {"method": "flickr.photos.search", "user_id": DEMO_USER, "target": "upload"}
    )
    assert (status, body["error"]["code"]) == (400, "ERR_INVALID_REQUEST")
    status, body = await _post(http, status_url, {"job_id": "f" * 32, "user_id": DEMO_USER})
    assert (status, body["error"]["code"]) == (404, "ERR_JOB_NOT_FOUND")
    status, body = await _post(http, status_url, {"job_id": "f" * 32})
    assert (status, body["error"]["code"]) == (400, "ERR_INVALID_REQUEST")
    async with http.post(rest, data=b"{", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "ERR_INVALID_REQUEST"
    async with http.post(rest, data=b"x", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415 and (await resp.json())["error"]["code"] == "ERR_UNSUPPORTED_MEDIA_TYPE"
    async with http.get(rest) as resp:
        assert resp.status == 405 and (await resp.json())["error"]["code"] == "ERR_METHOD_NOT_ALLOWED"
    # Another user's job is not found, as in the original.
    status, body = await _post(http, rest, {"method": "flickr.photos.search", "user_id": DEMO_USER})
    assert status == 202
    status, other = await _post(
        http, status_url, {"job_id": body["data"]["job_id"], "user_id": "someone-else"}
    )
    assert (status, other["error"]["code"]) == (404, "ERR_JOB_NOT_FOUND")
    # The original's auth routes answer in its envelope too.
    status, body = await _post(http, f"{edge}/api/v1/auth/complete", {})
    assert status == 400 and body["data"] is None and body["error"]["code"].startswith("ERR_")


async def test_legacy_webhook_carries_the_original_payload(
    legacy: tuple[Stack, str, aiohttp.ClientSession],
) -> None:
    _stack, edge, http = legacy
    receiver = await Receiver().start()
    try:
        body = {
            "method": "flickr.photos.getInfo",
            "params": {"photo_id": "77"},
            "user_id": DEMO_USER,
            "callback_url": receiver.url,
            "callback_secret": SECRET,
            "meta": {"order": 7},
        }
        status, submitted = await _post(http, f"{edge}/api/v1/flickr/rest", body)
        assert status == 202, submitted
        job_id = submitted["data"]["job_id"]
        [delivery] = await receiver.wait_for(job_id)
    finally:
        await receiver.stop()
    assert webhook.verify(delivery.body, SECRET, delivery.headers[webhook.SIGNATURE_HEADER])
    payload = delivery.payload
    assert set(payload) == {
        "job_id", "user_id", "queue", "state", "result", "error", "from_cache",
        "attempts_made", "max_attempts", "timestamp", "trace_id", "meta",
    }  # fmt: skip
    assert payload["queue"] == "flickr_rest" and payload["state"] == "completed"
    assert payload["result"]["stat"] == "ok" and payload["error"] is None
    assert payload["attempts_made"] == 1 and payload["max_attempts"] >= 1
    assert payload["meta"] == {"order": 7}


async def test_private_callback_urls_are_refused_at_submission(
    legacy: tuple[Stack, str, aiohttp.ClientSession],
) -> None:
    _stack, edge, http = legacy
    for url in (
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://private.test:8080/hook",  # a name whose (configured) DNS answer is private
        "http://[::1]/hook",
        "ftp://example.com/hook",
    ):
        for path, shape in (("/api/v1/flickr/rest", "legacy"), ("/v1/jobs", "v1")):
            body = {"method": "flickr.photos.search", "user_id": DEMO_USER, "callback_url": url}
            status, answer = await _post(http, edge + path, {**body, "callback_secret": SECRET})
            assert status == 400, (url, answer)
            if shape == "legacy":
                assert answer["error"]["details"][0]["field"] == "callback_url"
            else:
                violations = next(d for d in answer["details"] if "field_violations" in d)["field_violations"]
                assert violations[0]["field"] == "callback_url"


async def test_delivery_rechecks_the_host_and_refuses_a_rebound_private_answer(
    legacy: tuple[Stack, str, aiohttp.ClientSession],
) -> None:
    stack, edge, http = legacy
    receiver = await Receiver().start()
    port = receiver.url.split(":")[2].split("/")[0]
    sender = stack.workers[0].webhooks
    original = sender.guard
    try:
        # Submission: rebind.test resolves public (93.184.216.34) → accepted.
        body = {
            "method": "flickr.photos.getInfo",
            "params": {"photo_id": "1"},
            "user_id": DEMO_USER,
            "callback_url": f"http://rebind.test:{port}/hook",
            "callback_secret": SECRET,
        }
        # Delivery: the name now answers 127.0.0.1 (DNS rebinding), which is not allow-listed by name.
        sender.guard = urlguard.UrlGuard.from_config("", "rebind.test=127.0.0.1")
        status, submitted = await _post(http, f"{edge}/api/v1/flickr/rest", body)
        assert status == 202, submitted
        job_id = submitted["data"]["job_id"]
        for _ in range(200):
            doc = await stack.store.get(job_id)
            if doc and doc.get("webhook"):
                break
            await asyncio.sleep(0.05)
        assert doc is not None and doc["webhook"]["status"] == "refused"
        assert receiver.attempts == 0
        # Control: when loopback is allowed, delivery connects to the checked (pinned) address, although
        # rebind.test exists in no real DNS: the connection goes where the check looked, nowhere else.
        sender.guard = urlguard.UrlGuard.from_config("127.0.0.0/8", "rebind.test=127.0.0.1")
        status, submitted = await _post(http, f"{edge}/api/v1/flickr/rest", body)
        [delivery] = await receiver.wait_for(submitted["data"]["job_id"])
        assert delivery.headers["Host"].startswith("rebind.test")
    finally:
        sender.guard = original
        await receiver.stop()


async def test_a_webhook_queued_twice_is_posted_once(
    legacy: tuple[Stack, str, aiohttp.ClientSession],
) -> None:
    # A worker that dies after queuing a webhook and before acking its job leaves a second entry queued.
    stack, edge, http = legacy
    receiver = await Receiver(delay_s=1.0).start()  # the first delivery is still in flight below
    try:
        body = {
            "method": "flickr.photos.getInfo",
            "params": {"photo_id": "78"},
            "user_id": DEMO_USER,
            "callback_url": receiver.url,
            "callback_secret": SECRET,
        }
        status, submitted = await _post(http, f"{edge}/api/v1/flickr/rest", body)
        assert status == 202, submitted
        job_id = submitted["data"]["job_id"]
        for _ in range(400):
            if receiver.attempts:
                break
            await asyncio.sleep(0.01)
        assert receiver.attempts == 1
        second = await stack.workers[0].webhooks.deliver(job_id)  # the second entry, while the first posts
        for _ in range(400):
            doc = await stack.store.get(job_id)
            if doc and doc.get("webhook"):
                break
            await asyncio.sleep(0.01)
        third = await stack.workers[0].webhooks.deliver(job_id)  # a later one finds it delivered
    finally:
        await receiver.stop()
    assert (second, third) == ("duplicate", "skipped")
    assert receiver.attempts == 1
    assert doc is not None and doc["webhook"]["status"] == "delivered"
