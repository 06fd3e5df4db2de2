"""The sandbox checked by code nobody here wrote: the `flickrapi` package (2.4.0) against it.

flickrapi is synchronous (requests + requests-oauthlib), so its calls run in a
thread while the sandbox serves on the test's event loop. Its endpoint URLs are
class attributes, overridden here on the instances only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import flickrapi  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from sandbox.app import start
from sandbox.state import DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, DEMO_USER_NSID, SandboxState
from tests.helpers.flickr_approve import decide


@dataclass
class Sandbox:
    state: SandboxState
    base: str
    http: aiohttp.ClientSession


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    state = SandboxState.demo()
    runner, port = await start(state)
    async with aiohttp.ClientSession() as http:
        yield Sandbox(state, f"http://127.0.0.1:{port}", http)
    await runner.cleanup()


def _client(base: str, secret: str = DEMO_CONSUMER_SECRET, token: Any = None) -> Any:
    flickr = flickrapi.FlickrAPI(
        DEMO_CONSUMER_KEY, secret, token=token, format="parsed-json", store_token=False, timeout=10
    )
    flickr.REST_URL = f"{base}/services/rest/"
    flickr.UPLOAD_URL = f"{base}/services/upload/"
    flickr.REPLACE_URL = f"{base}/services/replace/"
    oauth = flickr.flickr_oauth
    oauth.REQUEST_TOKEN_URL = f"{base}/services/oauth/request_token"
    oauth.AUTHORIZE_URL = f"{base}/services/oauth/authorize"
    oauth.ACCESS_TOKEN_URL = f"{base}/services/oauth/access_token"
    return flickr


async def _authorized(sandbox: Sandbox, perms: str = "read") -> Any:
    flickr = _client(sandbox.base)
    await asyncio.to_thread(flickr.get_request_token, oauth_callback="oob")
    url = flickr.auth_url(perms=perms)
    assert url.startswith(f"{sandbox.base}/services/oauth/authorize?oauth_token=72157")
    approval = await decide(sandbox.http, url)
    assert re.fullmatch(r"\d{3}-\d{3}-\d{3}", approval.verifier), approval.text
    await asyncio.to_thread(flickr.get_access_token, approval.verifier)
    return flickr


async def test_flickrapi_completes_oauth_and_calls_methods(sandbox: Sandbox) -> None:
    flickr = await _authorized(sandbox, "read")
    token = flickr.token_cache.token
    assert token.user_nsid == DEMO_USER_NSID
    assert token.username == "flickrhub-demo"
    assert token.access_level == "read"
    assert sandbox.state.tokens[token.token].perms == "read"
    login = await asyncio.to_thread(flickr.test.login)
    assert login["stat"] == "ok"
    assert login["user"]["id"] == DEMO_USER_NSID
    found = await asyncio.to_thread(flickr.photos.search, text="kittens")
    assert found["stat"] == "ok"
    assert found["photos"]["photo"]
    check = await asyncio.to_thread(flickr.auth.oauth.checkToken)
    assert check["oauth"]["perms"]["_content"] == "read"


async def test_flickrapi_read_token_cannot_write(sandbox: Sandbox) -> None:
    flickr = await _authorized(sandbox, "read")
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(flickr.photos.setMeta, photo_id="123", title="x")
    assert err.value.code == 99


async def test_flickrapi_with_a_tampered_token_secret_is_refused(sandbox: Sandbox) -> None:
    good = (await _authorized(sandbox, "write")).token_cache.token
    tampered = flickrapi.auth.FlickrAccessToken(
        good.token, "0" * 16, good.access_level, good.fullname, good.username, good.user_nsid
    )
    flickr = _client(sandbox.base, token=tampered)
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(flickr.test.login)
    assert err.value.code == 96  # Invalid signature


async def test_flickrapi_with_a_tampered_consumer_secret_gets_no_request_token(sandbox: Sandbox) -> None:
    flickr = _client(sandbox.base, secret="tampered-consumer-secret")
    with pytest.raises(flickrapi.FlickrError, match="Status code 401"):
        await asyncio.to_thread(flickr.get_request_token, oauth_callback="oob")
    assert not sandbox.state.calls  # nothing reached the REST endpoint


async def test_flickrapi_cannot_reuse_a_verifier(sandbox: Sandbox) -> None:
    flickr = _client(sandbox.base)
    await asyncio.to_thread(flickr.get_request_token, oauth_callback="oob")
    approval = await decide(sandbox.http, flickr.auth_url(perms="delete"))
    request_key = flickr.flickr_oauth.resource_owner_key
    request_secret = flickr.flickr_oauth.resource_owner_secret
    await asyncio.to_thread(flickr.get_access_token, approval.verifier)
    replay = _client(sandbox.base)
    replay.flickr_oauth.resource_owner_key = request_key
    replay.flickr_oauth.resource_owner_secret = request_secret
    replay.flickr_oauth.requested_permissions = "delete"
    with pytest.raises(flickrapi.FlickrError, match="Status code 401"):
        await asyncio.to_thread(replay.get_access_token, approval.verifier)
