"""Large REST uploads refused while their body is still arriving: a clean JSON error, nothing stored.

The edge dials the gateway over a channel without credentials of its own, so the
client's headers decide. Bodies are generated here (tens of MB of random bytes) and
streamed chunked, so no Content-Length lets the edge refuse before reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from common.settings import Settings
from edge import app as edge_app
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.integration.test_uploads import JPEG_HEAD, assert_nothing_written

MIB = 1024 * 1024
LIMIT = Settings.from_env(env={}).edge_upload_max_bytes  # 101 MiB: a 100 MiB photo and its job part


@pytest_asyncio.fixture
async def stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    # No mover and no worker: a job wrongly accepted stays in Mongo and its token stream.
    async with running_stack(settings, movers=0, workers=0, cache=False) as running:
        yield running


@pytest_asyncio.fixture
async def edge(stack: Stack) -> AsyncIterator[str]:
    channel = stack.unauthenticated_channel()
    runner = web.AppRunner(edge_app.create_app(Settings.from_env({}), channel))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
    await channel.close()


def _body(user_id: str, photo_bytes: int, *, give_up_after: int | None = None) -> AsyncIterator[bytes]:
    """A multipart body (boundary `b`) whose photo has `photo_bytes` random bytes, sent 1 MiB at a time."""
    job = json.dumps({"user_id": user_id, "target": "TARGET_UPLOAD"}).encode()
    head = b'--b\r\nContent-Disposition: form-data; name="job"\r\n\r\n' + job + b"\r\n"
    head += b'--b\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n\r\n' + JPEG_HEAD
    block = os.urandom(MIB)

    async def body() -> AsyncIterator[bytes]:
        yield head
        for sent in range(0, photo_bytes, MIB):
            if give_up_after is not None and sent >= give_up_after:
                raise ConnectionAbortedError("the client gives up mid-body")
            yield block[: min(MIB, photo_bytes - sent)]
        yield b"\r\n--b--\r\n"

    return body()


async def _post(edge: str, headers: dict[str, str], body: AsyncIterator[bytes]) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "multipart/form-data; boundary=b", **headers}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge}/v1/uploads", data=body, headers=sent) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_streamed_body_over_101_mb_is_a_413_and_nothing_is_stored(
    stack: Stack, edge: str, redis: Any
) -> None:
    status, body = await _post(edge, stack.auth_headers, _body(DEMO_USER, LIMIT + 2 * MIB))
    assert status == 413
    assert set(body) == {"code", "message", "details"}
    assert f"larger than {LIMIT} bytes" in body["message"]
    # The gateway had accepted the job and stored most of the photo: the edge must make it refuse
    # the rest, not leave a stream that looks complete (a truncated photo would have been uploaded).
    await assert_nothing_written(stack, redis)


def _bad_key(stack: Stack) -> dict[str, str]:
    return {"Authorization": "Bearer fhk_abcd_" + "x" * 43}


def _admin_key(stack: Stack) -> dict[str, str]:
    return stack.auth_headers


def _client_key(stack: Stack) -> dict[str, str]:
    assert stack.keys is not None
    return {"Authorization": f"Bearer {stack.keys.client_key}"}


@pytest.mark.parametrize(
    ("headers", "user_id", "http_status", "grpc_code"),
    [
        (_bad_key, DEMO_USER, 401, 16),  # forged credential
        (lambda _: {}, DEMO_USER, 401, 16),  # no credential
        (_client_key, "someone-else", 403, 7),  # a key acting for a user it is not bound to
        (_admin_key, "nobody", 404, 5),  # a user without a Flickr token
    ],
    ids=["forged-key", "no-key", "other-user", "unknown-user"],
)
async def test_a_refusal_while_60_mb_are_still_being_sent_keeps_its_status(
    stack: Stack,
    edge: str,
    redis: Any,
    headers: Callable[[Stack], dict[str, str]],
    user_id: str,
    http_status: int,
    grpc_code: int,
) -> None:
    status, body = await _post(edge, headers(stack), _body(user_id, 60 * MIB))
    assert (status, body["code"]) == (http_status, grpc_code), body  # was 500 "Internal error from Core"
    assert set(body) == {"code", "message", "details"}
    await assert_nothing_written(stack, redis)


async def test_a_client_that_hangs_up_mid_body_leaves_nothing_behind(
    stack: Stack, edge: str, redis: Any
) -> None:
    for _ in range(2):
        with pytest.raises(aiohttp.ClientError):
            await _post(edge, stack.auth_headers, _body(DEMO_USER, 80 * MIB, give_up_after=40 * MIB))
    await assert_nothing_written(stack, redis)
