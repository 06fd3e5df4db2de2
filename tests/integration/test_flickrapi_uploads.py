"""The sandbox's upload and replace endpoints checked by the `flickrapi` package (2.4.0).

flickrapi signs a dummy urlencoded request without `photo` and moves its
Authorization header onto the real multipart body (docs/flickr-api.md §6); the sandbox
must accept exactly that, and answer XML flickrapi parses.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import flickrapi  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from sandbox.app import start
from sandbox.state import (
    DEMO_CONSUMER_KEY,
    DEMO_CONSUMER_SECRET,
    DEMO_TOKEN,
    DEMO_TOKEN_SECRET,
    DEMO_USER_NSID,
    DEMO_USERNAME,
    SandboxState,
    Token,
)

JPEG = b"\xff\xd8\xff\xe0" + os.urandom(50_000)


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[tuple[SandboxState, str]]:
    state = SandboxState.demo()
    runner, port = await start(state)
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _client(
    base: str, token: str = DEMO_TOKEN, secret: str = DEMO_TOKEN_SECRET, perms: str = "delete"
) -> Any:
    access = flickrapi.auth.FlickrAccessToken(token, secret, perms, "", DEMO_USERNAME, DEMO_USER_NSID)
    flickr = flickrapi.FlickrAPI(
        DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, token=access, store_token=False, timeout=10
    )
    flickr.REST_URL = f"{base}/services/rest/"
    flickr.UPLOAD_URL = f"{base}/services/upload/"
    flickr.REPLACE_URL = f"{base}/services/replace/"
    return flickr


async def test_flickrapi_uploads_and_replaces_a_photo(sandbox: tuple[SandboxState, str]) -> None:
    state, base = sandbox
    flickr = _client(base)
    rsp = await asyncio.to_thread(
        flickr.upload, "harbour.jpg", fileobj=io.BytesIO(JPEG), title="Grachten ö", tags='a "b c"'
    )
    photo_id = rsp.findtext("photoid")
    (arrived,) = state.uploads.uploads
    assert (arrived.photo_id, arrived.title) == (photo_id, "Grachten ö")
    assert arrived.sha256 == hashlib.sha256(JPEG).hexdigest()

    png = b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
    replaced = await asyncio.to_thread(flickr.replace, "new.png", photo_id, fileobj=io.BytesIO(png))
    element = replaced.find("photoid")
    assert element.text == photo_id
    assert element.get("secret") and element.get("originalsecret")
    assert state.uploads.uploads[-1].sha256 == hashlib.sha256(png).hexdigest()


async def test_flickrapi_sees_flickrs_upload_error_codes(sandbox: tuple[SandboxState, str]) -> None:
    _state, base = sandbox
    flickr = _client(base)
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(flickr.upload, "notes.txt", fileobj=io.BytesIO(b"just text"))
    assert err.value.code == 5
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(flickr.replace, "p.jpg", "12340", fileobj=io.BytesIO(JPEG))
    assert err.value.code == 1


async def test_flickrapi_upload_with_a_wrong_secret_or_a_read_token_is_refused(
    sandbox: tuple[SandboxState, str],
) -> None:
    state, base = sandbox
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(_client(base, secret="0" * 16).upload, "p.jpg", fileobj=io.BytesIO(JPEG))
    assert err.value.code == 96  # Invalid signature
    state.add_token(
        Token("72157600000000002-read", "readsecret000001", DEMO_USER_NSID, DEMO_USERNAME, "read")
    )
    reader = _client(base, "72157600000000002-read", "readsecret000001", "read")
    with pytest.raises(flickrapi.FlickrError) as err:
        await asyncio.to_thread(reader.upload, "p.jpg", fileobj=io.BytesIO(JPEG))
    assert err.value.code == 99
    assert state.uploads.uploads == []
