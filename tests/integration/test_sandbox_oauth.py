"""The sandbox's OAuth endpoints over real HTTP, driven by FlickrHub's own OAuth client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
import pytest_asyncio

from common import oauth1
from common.errors import FlickrHubError
from common.settings import FlickrEndpoints, Settings
from gateway import flickr_oauth
from sandbox.app import start
from sandbox.state import DEMO_USER_NSID, SandboxState
from tests.helpers.flickr_approve import decide

TOKEN_RE = re.compile(r"72157\d{12}-[0-9a-f]{16}")
SECRET_RE = re.compile(r"[0-9a-f]{16}")


@dataclass
class Sandbox:
    state: SandboxState
    base: str
    endpoints: FlickrEndpoints
    http: aiohttp.ClientSession


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    state = SandboxState.demo()
    runner, port = await start(state)
    base = f"http://127.0.0.1:{port}"
    endpoints = Settings.from_env({"SANDBOX_URL": base}).flickr_endpoints
    async with aiohttp.ClientSession() as http:
        yield Sandbox(state, base, endpoints, http)
    await runner.cleanup()


async def _rest(sb: Sandbox, creds: oauth1.Credentials, method: str, **params: str) -> dict[str, object]:
    url = f"{sb.base}/services/rest/"
    body = oauth1.signed_params(
        "POST", url, {"method": method, "format": "json", "nojsoncallback": "1", **params}, creds
    )
    async with sb.http.post(url, data=body) as resp:
        answer: dict[str, object] = await resp.json(content_type=None)
        return answer


async def test_oob_flow_grants_a_token_that_works_with_the_approved_perms(sandbox: Sandbox) -> None:
    token, secret = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "oob")
    assert TOKEN_RE.fullmatch(token)
    assert SECRET_RE.fullmatch(secret)
    approval = await decide(sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "read"))
    assert re.fullmatch(r"\d{3}-\d{3}-\d{3}", approval.verifier), approval.text
    granted = await flickr_oauth.access_token(
        sandbox.http, sandbox.endpoints, token, secret, approval.verifier
    )
    assert TOKEN_RE.fullmatch(granted.token)
    assert granted.user_nsid == DEMO_USER_NSID
    assert granted.username == "flickrhub-demo"
    assert granted.fullname == "FlickrHub Demo"
    assert "secret" not in repr(granted) and granted.secret not in repr(granted)
    creds = oauth1.Credentials(
        sandbox.endpoints.consumer_key, sandbox.endpoints.consumer_secret, granted.token, granted.secret
    )
    login = await _rest(sandbox, creds, "flickr.test.login")
    assert login["stat"] == "ok"
    assert login["user"] == {"id": DEMO_USER_NSID, "username": {"_content": "flickrhub-demo"}}
    # read was approved, so a write method is refused with Flickr's code 99.
    refused = await _rest(sandbox, creds, "flickr.photos.setMeta", photo_id="123", title="x")
    assert refused["stat"] == "fail"
    assert refused["code"] == 99


async def test_callback_flow_redirects_with_a_hex_verifier(sandbox: Sandbox) -> None:
    callback = "https://hub.example.com/v1/auth/callback?from=flickr"
    token, secret = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, callback)
    approval = await decide(sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "write"))
    assert approval.status == 302
    match = re.fullmatch(
        re.escape(callback) + r"&oauth_token=(?P<t>[^&]+)&oauth_verifier=(?P<v>[0-9a-f]{16})",
        approval.location,
    )
    assert match, approval.location
    assert match["t"] == token
    granted = await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, secret, match["v"])
    assert sandbox.state.tokens[granted.token].perms == "write"


async def test_request_token_without_callback_is_parameter_absent(sandbox: Sandbox) -> None:
    creds = oauth1.Credentials(sandbox.endpoints.consumer_key, sandbox.endpoints.consumer_secret)
    url = sandbox.endpoints.request_token
    async with sandbox.http.post(
        url, headers={"Authorization": oauth1.authorization_header("POST", url, {}, creds)}
    ) as r:
        assert r.status == 401
        assert r.content_type == "text/plain"
        assert await r.text() == "oauth_problem=parameter_absent&oauth_parameters_absent=oauth_callback"


async def test_wrong_consumer_secret_is_refused_as_signature_invalid(sandbox: Sandbox) -> None:
    bad = FlickrEndpoints(**{**sandbox.endpoints.__dict__, "consumer_secret": "not-the-secret"})
    with pytest.raises(FlickrHubError) as err:
        await flickr_oauth.request_token(sandbox.http, bad, "oob")
    assert err.value.reason == "FLICKR_APP_REJECTED"
    assert err.value.metadata["oauth_problem"] == "signature_invalid"


async def test_wrong_verifier_is_refused_and_the_right_one_still_works_once(sandbox: Sandbox) -> None:
    token, secret = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "oob")
    approval = await decide(sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "delete"))
    with pytest.raises(FlickrHubError) as wrong:
        await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, secret, "000-000-000")
    assert wrong.value.code == grpc.StatusCode.INVALID_ARGUMENT
    await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, secret, approval.verifier)
    with pytest.raises(FlickrHubError) as reused:
        await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, secret, approval.verifier)
    assert reused.value.reason == "FLICKR_TOKEN_REJECTED"


async def test_denied_request_gets_no_verifier_and_no_token(sandbox: Sandbox) -> None:
    token, secret = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "https://x.example/cb")
    approval = await decide(
        sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "read"), "deny"
    )
    assert approval.status == 200
    assert not approval.location
    assert not approval.verifier
    with pytest.raises(FlickrHubError) as err:
        await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, secret, "0123456789abcdef")
    assert err.value.reason == "FLICKR_AUTHORIZATION_DENIED"


async def test_access_token_signed_with_a_wrong_request_secret_is_refused(sandbox: Sandbox) -> None:
    token, _secret = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "oob")
    approval = await decide(sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "read"))
    with pytest.raises(FlickrHubError) as err:
        await flickr_oauth.access_token(sandbox.http, sandbox.endpoints, token, "0" * 16, approval.verifier)
    assert err.value.metadata["oauth_problem"] == "signature_invalid"


async def test_authorize_page_refuses_unknown_perms_and_tokens(sandbox: Sandbox) -> None:
    token, _ = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "oob")
    async with sandbox.http.get(sandbox.endpoints.authorize, params={"oauth_token": token}) as r:
        assert r.status == 400
        assert "recognise the permission set" in await r.text()
    async with sandbox.http.get(
        sandbox.endpoints.authorize, params={"oauth_token": "nope", "perms": "read"}
    ) as r:
        assert r.status == 404


async def test_control_lists_pending_requests_with_their_verifiers(sandbox: Sandbox) -> None:
    token, _ = await flickr_oauth.request_token(sandbox.http, sandbox.endpoints, "oob")
    approval = await decide(sandbox.http, flickr_oauth.authorize_url(sandbox.endpoints, token, "read"))
    async with sandbox.http.get(f"{sandbox.base}/_sandbox/oauth/pending") as r:
        pending = await r.json()
    assert [(p["oauth_token"], p["state"], p["verifier"]) for p in pending] == [
        (token, "approved", approval.verifier)
    ]


async def test_unreachable_flickr_is_unavailable() -> None:
    endpoints = Settings.from_env({"SANDBOX_URL": "http://127.0.0.1:9"}).flickr_endpoints
    async with aiohttp.ClientSession() as http:
        with pytest.raises(FlickrHubError) as err:
            await flickr_oauth.request_token(http, endpoints, "oob", timeout_s=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.reason == "FLICKR_UNAVAILABLE"
