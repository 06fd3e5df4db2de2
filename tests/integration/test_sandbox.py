"""The Flickr sandbox, over real HTTP: Flickr's checks and codes, methods, formats, faults, call log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import aiohttp
import pytest
import pytest_asyncio
from oauthlib.oauth1 import SIGNATURE_TYPE_AUTH_HEADER, SIGNATURE_TYPE_BODY, SIGNATURE_TYPE_QUERY, Client
from yarl import URL

from common import flickr_methods, oauth1
from common.oauth1 import Credentials
from sandbox.app import start
from sandbox.envelope import to_xml
from sandbox.methods import METHODS, PARAMETERLESS, Call, FlickrFault, login
from sandbox.state import (
    DEMO_CONSUMER_KEY,
    DEMO_CONSUMER_SECRET,
    DEMO_TOKEN,
    DEMO_TOKEN_SECRET,
    DEMO_USER_NSID,
    DEMO_USERNAME,
    SandboxState,
)

DEMO = Credentials(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, DEMO_TOKEN, DEMO_TOKEN_SECRET)
APP_ONLY = Credentials(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET)
JSON = {"format": "json", "nojsoncallback": "1"}


@dataclass
class Reply:
    """What the sandbox answered."""

    status: int
    text: str
    content_type: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Sandbox:
    """A running sandbox and a client session to talk to it."""

    state: SandboxState
    port: int
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base}/services/rest"

    async def call(
        self,
        params: dict[str, str],
        creds: Credentials | None = DEMO,
        *,
        how: str = "query",
        url: str | None = None,
        sign_url: str | None = None,
        headers: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
        **oauth: Any,
    ) -> Reply:
        """Send `params` signed with `creds` (None: unsigned) in the query, form, multipart body or header."""
        url = url or self.rest_url
        sign_url = sign_url or url
        verb = "GET" if how == "query" else "POST"
        headers = dict(headers or {})
        if creds is not None and how == "header":
            headers["Authorization"] = oauth1.authorization_header(verb, sign_url, params, creds, **oauth)
        elif creds is not None:
            params = oauth1.signed_params(verb, sign_url, params, creds, **oauth)
        if how == "query":
            request = self.session.get(url, params=params, headers=headers)
        elif how == "multipart":
            form = aiohttp.FormData(default_to_multipart=True)
            for name, value in params.items():
                form.add_field(name, value)
            for name, content in (files or {}).items():
                form.add_field(name, content, filename="dummy name", content_type="image/jpeg")
            request = self.session.post(url, data=form, headers=headers)
        else:
            request = self.session.post(url, data=params, headers=headers)
        async with request as response:
            return Reply(response.status, await response.text(), response.content_type)

    async def flickr(self, method: str, creds: Credentials | None = DEMO, **params: str) -> Any:
        """Call `method` with JSON output; the parsed envelope."""
        reply = await self.call({"method": method, **JSON, **params}, creds)
        assert reply.status == 200, reply.text
        return reply.json()

    async def control(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call a control route; (status, parsed JSON or None)."""
        async with self.session.request(verb, f"{self.base}/_sandbox{path}", json=body) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    state = SandboxState.demo()
    runner, port = await start(state)
    try:
        async with aiohttp.ClientSession() as session:
            yield Sandbox(state, port, session)
    finally:
        await runner.cleanup()


async def add_token(sandbox: Sandbox, perms: str, name: str = "t-1", **extra: str) -> Credentials:
    body = {
        "token": name,
        "token_secret": f"{name}-secret",
        "user_nsid": "555@N01",
        "username": "u5",
        "perms": perms,
    }
    status, _ = await sandbox.control("POST", "/tokens", {**body, **extra})
    assert status == 201
    return Credentials(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, name, f"{name}-secret")


def fail(code: int, message: str) -> dict[str, Any]:
    return {"stat": "fail", "code": code, "message": message}


# --- formats --------------------------------------------------------------------------------------


async def test_json_with_nojsoncallback_is_plain_json(sandbox: Sandbox) -> None:
    reply = await sandbox.call({"method": "flickr.test.echo", "foo": "bar", **JSON})
    assert reply.content_type == "application/json"
    assert reply.json()["foo"] == {"_content": "bar"}
    assert reply.json()["stat"] == "ok"


async def test_json_alone_is_jsonp_with_default_or_named_callback(sandbox: Sandbox) -> None:
    reply = await sandbox.call({"method": "flickr.test.echo", "format": "json"})
    assert reply.text.startswith("jsonFlickrApi({")
    assert reply.text.endswith("})")
    named = await sandbox.call({"method": "flickr.test.echo", "format": "json", "jsoncallback": "cb.x_1"})
    assert named.text.startswith("cb.x_1({")
    hostile = await sandbox.call(
        {"method": "flickr.test.echo", "format": "json", "jsoncallback": "alert(1)//"}
    )
    assert hostile.text.startswith("jsonFlickrApi({")


@pytest.mark.parametrize("fmt", [None, "rest"])
async def test_rest_format_is_xml(sandbox: Sandbox, fmt: str | None) -> None:
    params = {"method": "flickr.photos.getInfo", "photo_id": "12345"} | ({"format": fmt} if fmt else {})
    reply = await sandbox.call(params)
    assert reply.content_type == "text/xml"
    assert reply.text.startswith('<?xml version="1.0" encoding="utf-8" ?>')
    rsp = ET.fromstring(reply.text.split("\n", 1)[1])  # noqa: S314 - our own server's output
    assert rsp.get("stat") == "ok"
    photo = rsp.find("photo")
    assert photo is not None
    assert photo.get("id") == "12345"
    assert rsp.findtext("photo/title") == "Sandbox photo 12345"
    assert rsp.find("photo/tags/tag") is not None
    assert rsp.find("photo/urls/url").get("type") == "photopage"  # type: ignore[union-attr]


async def test_xml_failure_carries_err_code_and_msg(sandbox: Sandbox) -> None:
    reply = await sandbox.call({"method": "flickr.nope"}, None)
    rsp = ET.fromstring(reply.text.split("\n", 1)[1])  # noqa: S314 - our own server's output
    assert rsp.get("stat") == "fail"
    assert rsp.find("err").attrib == {"code": "112", "msg": 'Method "flickr.nope" not found'}  # type: ignore[union-attr]


async def test_unknown_format_is_code_111(sandbox: Sandbox) -> None:
    reply = await sandbox.call({"method": "flickr.test.echo", "format": "yaml"})
    assert reply.status == 200
    assert '<err code="111" msg="Format &quot;yaml&quot; not found" />' in reply.text


# --- Flickr's checks, in order --------------------------------------------------------------------


async def test_unknown_or_missing_method_is_code_112_before_any_key_check(sandbox: Sandbox) -> None:
    assert await sandbox.flickr("flickr.photos.doesNotExist", None) == fail(
        112, 'Method "flickr.photos.doesNotExist" not found'
    )
    reply = await sandbox.call(dict(JSON), None)
    assert reply.json() == fail(112, 'Method "" not found')


async def test_missing_api_key_is_code_100_invalid_format(sandbox: Sandbox) -> None:
    assert await sandbox.flickr("flickr.test.echo", None) == fail(
        100, "Invalid API Key (Key has invalid format)"
    )


async def test_unknown_api_key_or_consumer_key_is_code_100_not_found(sandbox: Sandbox) -> None:
    expected = fail(100, "Invalid API Key (Key not found)")
    assert await sandbox.flickr("flickr.test.echo", None, api_key="nope") == expected
    assert await sandbox.flickr("flickr.test.echo", Credentials("nope", "x")) == expected


async def test_api_key_alone_serves_methods_that_need_no_login(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr(
        "flickr.people.getInfo", None, api_key=DEMO_CONSUMER_KEY, user_id=DEMO_USER_NSID
    )
    assert answer["person"]["username"] == {"_content": DEMO_USERNAME}


async def test_bad_signature_is_code_96_in_the_envelope(sandbox: Sandbox) -> None:
    wrong = Credentials(DEMO_CONSUMER_KEY, "wrong-secret", DEMO_TOKEN, DEMO_TOKEN_SECRET)
    reply = await sandbox.call({"method": "flickr.test.login", **JSON}, wrong)
    assert (reply.status, reply.json()) == (200, fail(96, "Invalid signature"))


async def test_signature_covers_the_path_exactly_as_sent(sandbox: Sandbox) -> None:
    params = {"method": "flickr.test.login", **JSON}
    slash = sandbox.rest_url + "/"
    assert (await sandbox.call(params, url=slash)).json()["stat"] == "ok"
    assert (await sandbox.call(params, url=slash, sign_url=sandbox.rest_url)).json() == fail(
        96, "Invalid signature"
    )


async def test_signature_base_url_honours_x_forwarded_proto(sandbox: Sandbox) -> None:
    params = {"method": "flickr.test.login", **JSON}
    https = sandbox.rest_url.replace("http://", "https://")
    proxied = await sandbox.call(params, sign_url=https, headers={"X-Forwarded-Proto": "https"})
    assert proxied.json()["stat"] == "ok"
    assert (await sandbox.call(params, sign_url=https)).json() == fail(96, "Invalid signature")


async def test_malformed_oauth_header_is_code_96(sandbox: Sandbox) -> None:
    reply = await sandbox.call(
        {"method": "flickr.test.echo", "api_key": DEMO_CONSUMER_KEY, **JSON},
        None,
        how="form",
        headers={"Authorization": "OAuth broken"},
    )
    assert reply.json() == fail(96, "Invalid signature")


async def test_oauth_params_without_signature_are_code_97(sandbox: Sandbox) -> None:
    params = {"method": "flickr.test.echo", **JSON, **oauth1.oauth_params(DEMO)}
    assert (await sandbox.call(params, None)).json() == fail(97, "Missing signature")


async def test_check_token_needs_a_signature_even_with_an_api_key(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr("flickr.auth.oauth.checkToken", None, api_key=DEMO_CONSUMER_KEY)
    assert answer == fail(97, "Missing signature")


async def test_absent_oauth_nonce_is_http_401_parameter_absent(sandbox: Sandbox) -> None:
    params = oauth1.signed_params("GET", sandbox.rest_url, {"method": "flickr.test.echo"}, DEMO)
    del params["oauth_nonce"]
    reply = await sandbox.call(params, None)
    assert reply.status == 401
    assert reply.content_type == "text/plain"
    assert reply.text == "oauth_problem=parameter_absent&oauth_parameters_absent=oauth_nonce"


async def test_unknown_token_is_code_98(sandbox: Sandbox) -> None:
    stranger = Credentials(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, "no-such-token", "x")
    assert await sandbox.flickr("flickr.test.login", stranger) == fail(98, "Invalid auth token")


async def test_revoked_token_is_code_98_and_reset_restores_the_seed(sandbox: Sandbox) -> None:
    assert (await sandbox.control("DELETE", f"/tokens/{DEMO_TOKEN}"))[0] == 204
    assert await sandbox.flickr("flickr.test.login") == fail(98, "Invalid auth token")
    assert (await sandbox.control("DELETE", f"/tokens/{DEMO_TOKEN}"))[0] == 404
    assert (await sandbox.control("POST", "/reset"))[0] == 204
    assert (await sandbox.flickr("flickr.test.login"))["stat"] == "ok"


async def test_token_bound_to_another_consumer_is_code_98(sandbox: Sandbox) -> None:
    assert (await sandbox.control("POST", "/apps", {"consumer_key": "k2", "consumer_secret": "s2"}))[0] == 201
    await add_token(sandbox, "read", "t-k2", consumer_key="k2")
    borrowed = Credentials(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET, "t-k2", "t-k2-secret")
    assert await sandbox.flickr("flickr.test.login", borrowed) == fail(98, "Invalid auth token")
    own = Credentials("k2", "s2", "t-k2", "t-k2-secret")
    assert (await sandbox.flickr("flickr.test.login", own))["user"]["id"] == "555@N01"


async def test_login_method_without_token_is_code_99_not_logged_in(sandbox: Sandbox) -> None:
    expected = fail(99, "User not logged in / Insufficient permissions")
    assert await sandbox.flickr("flickr.test.login", APP_ONLY) == expected
    assert await sandbox.flickr("flickr.test.login", None, api_key=DEMO_CONSUMER_KEY) == expected


@pytest.mark.parametrize(
    ("granted", "method", "required"),
    [("read", "flickr.photos.setMeta", "write"), ("write", "flickr.photos.delete", "delete")],
)
async def test_lower_perms_are_code_99_insufficient(
    sandbox: Sandbox, granted: str, method: str, required: str
) -> None:
    creds = await add_token(sandbox, granted)
    answer = await sandbox.flickr(method, creds, photo_id="11", title="t")
    message = f"Insufficient permissions. Method requires {required} privileges; {granted} granted."
    assert answer == fail(99, message)


async def test_replayed_nonce_is_http_401_nonce_used(sandbox: Sandbox) -> None:
    params = oauth1.signed_params("GET", sandbox.rest_url, {"method": "flickr.test.login", **JSON}, DEMO)
    assert (await sandbox.call(params, None)).json()["stat"] == "ok"
    replay = await sandbox.call(params, None)
    assert (replay.status, replay.text) == (401, "oauth_problem=nonce_used")
    # The same nonce with another timestamp is another request.
    later = int(params["oauth_timestamp"]) + 1
    fresh = await sandbox.call(
        {"method": "flickr.test.login", **JSON}, nonce=params["oauth_nonce"], timestamp=later
    )
    assert fresh.json()["stat"] == "ok"


@pytest.mark.parametrize("skew", [-301, 400])
async def test_timestamp_outside_five_minutes_is_http_401_timestamp_refused(
    sandbox: Sandbox, skew: int
) -> None:
    reply = await sandbox.call({"method": "flickr.test.login", **JSON}, timestamp=int(time.time()) + skew)
    assert reply.status == 401
    assert reply.text.startswith("oauth_problem=timestamp_refused&oauth_acceptable_timestamps=")


async def test_nonces_are_forgotten_once_their_timestamps_expire(sandbox: Sandbox) -> None:
    now = [1_800_000_000.0]
    sandbox.state.clock = lambda: now[0]
    params = {"method": "flickr.test.login", **JSON}
    signed = oauth1.signed_params("GET", sandbox.rest_url, params, DEMO, nonce="n", timestamp=int(now[0]))
    assert (await sandbox.call(signed, None)).json()["stat"] == "ok"
    now[0] += 601
    assert (await sandbox.call(params, nonce="n", timestamp=int(now[0]))).json()["stat"] == "ok"
    assert len(sandbox.state._nonces) == 1  # the first one was pruned


# --- where parameters come from -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["query", "form", "multipart", "header"])
async def test_params_from_every_place_are_merged_and_verified(sandbox: Sandbox, how: str) -> None:
    reply = await sandbox.call({"method": "flickr.test.echo", **JSON, "text": "ö ~!*'() +&="}, how=how)
    assert reply.json()["text"] == {"_content": "ö ~!*'() +&="}


async def test_multipart_file_parts_are_not_signed(sandbox: Sandbox) -> None:
    reply = await sandbox.call(
        {"method": "flickr.test.echo", **JSON, "title": "Ünïcode"},
        how="multipart",
        files={"photo": b"\xff\xd8jpeg"},
    )
    answer = reply.json()
    assert answer["title"] == {"_content": "Ünïcode"}
    assert "photo" not in answer


async def test_query_and_header_params_combine_in_one_signature(sandbox: Sandbox) -> None:
    params = {"method": "flickr.test.echo", **JSON, "a": "1"}
    header = oauth1.authorization_header("GET", f"{sandbox.rest_url}?{urlencode(params)}", {}, DEMO)
    reply = await sandbox.call(params, None, headers={"Authorization": header})
    assert reply.json()["a"] == {"_content": "1"}


# --- methods --------------------------------------------------------------------------------------


async def test_echo_returns_every_non_oauth_param(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr("flickr.test.echo", foo="bar")
    assert answer == {
        "method": {"_content": "flickr.test.echo"},
        "format": {"_content": "json"},
        "nojsoncallback": {"_content": "1"},
        "foo": {"_content": "bar"},
        "stat": "ok",
    }


async def test_login_returns_the_token_user(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr("flickr.test.login")
    assert answer == {"user": {"id": DEMO_USER_NSID, "username": {"_content": DEMO_USERNAME}}, "stat": "ok"}


async def test_check_token_returns_perms_and_user(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr("flickr.auth.oauth.checkToken")
    assert answer["oauth"] == {
        "token": {"_content": DEMO_TOKEN},
        "perms": {"_content": "delete"},
        "user": {"nsid": DEMO_USER_NSID, "username": DEMO_USERNAME, "fullname": ""},
    }
    assert await sandbox.flickr("flickr.auth.oauth.checkToken", APP_ONLY) == fail(98, "Invalid token")


async def test_people_get_info_knows_seeded_and_token_users_only(sandbox: Sandbox) -> None:
    answer = await sandbox.flickr("flickr.people.getInfo", user_id="21207597@N07")
    assert answer["person"]["id"] == "21207597@N07"
    assert answer["person"]["username"] == {"_content": "jamalfanaian"}
    assert isinstance(answer["person"]["photos"]["count"]["_content"], int)
    await add_token(sandbox, "read")
    assert (await sandbox.flickr("flickr.people.getInfo", user_id="555@N01"))["person"]["username"][
        "_content"
    ] == "u5"
    assert await sandbox.flickr("flickr.people.getInfo", user_id="1@N00") == fail(1, "User not found")
    assert await sandbox.flickr("flickr.people.getInfo") == fail(1, "User not found")


async def test_parameterless_search_is_code_3(sandbox: Sandbox) -> None:
    assert await sandbox.flickr("flickr.photos.search", per_page="5", extras="url_m") == fail(
        3, PARAMETERLESS
    )


async def test_search_pages_are_numeric_and_deterministic(sandbox: Sandbox) -> None:
    first = (await sandbox.flickr("flickr.photos.search", text="cats", per_page="7"))["photos"]
    again = (await sandbox.flickr("flickr.photos.search", text="cats", per_page="7"))["photos"]
    assert first == again
    total = first["total"]
    assert isinstance(total, int)
    assert 1 <= total <= 1000
    assert (first["page"], first["perpage"], first["pages"]) == (1, 7, -(-total // 7))
    assert len(first["photo"]) == min(7, total)
    photo = first["photo"][0]
    assert isinstance(photo["id"], str)
    assert photo["id"].isdigit()
    assert not photo["id"].endswith("0")
    assert (photo["farm"], photo["ispublic"], photo["isfriend"]) == (66, 1, 0)
    last = (
        await sandbox.flickr("flickr.photos.search", text="cats", per_page="7", page=str(first["pages"]))
    )["photos"]
    assert len(last["photo"]) == total - 7 * (first["pages"] - 1)
    beyond = (await sandbox.flickr("flickr.photos.search", text="cats", page=str(first["pages"] * 7 + 1)))[
        "photos"
    ]
    assert beyond["photo"] == []
    other = (await sandbox.flickr("flickr.photos.search", text="dogs", per_page="7"))["photos"]
    assert other["photo"][0]["id"] != photo["id"]


async def test_search_per_page_defaults_to_100_and_caps_at_500(sandbox: Sandbox) -> None:
    assert (await sandbox.flickr("flickr.photos.search", tags="x"))["photos"]["perpage"] == 100
    assert (await sandbox.flickr("flickr.photos.search", tags="x", per_page="9999"))["photos"][
        "perpage"
    ] == 500
    assert (await sandbox.flickr("flickr.photos.search", tags="x", per_page="junk"))["photos"][
        "perpage"
    ] == 100


async def test_search_by_user_resolves_me_and_refuses_unknown_users(sandbox: Sandbox) -> None:
    mine = (await sandbox.flickr("flickr.photos.search", user_id="me"))["photos"]["photo"]
    assert {p["owner"] for p in mine} == {DEMO_USER_NSID}
    assert await sandbox.flickr("flickr.photos.search", user_id="1@N00") == fail(2, "Unknown user")


async def test_get_recent_needs_no_filter(sandbox: Sandbox) -> None:
    photos = (await sandbox.flickr("flickr.photos.getRecent", per_page="3"))["photos"]
    assert len(photos["photo"]) == 3


async def test_searched_photos_have_info_and_sizes(sandbox: Sandbox) -> None:
    photo = (await sandbox.flickr("flickr.photos.search", text="x", per_page="1"))["photos"]["photo"][0]
    info = (await sandbox.flickr("flickr.photos.getInfo", photo_id=photo["id"]))["photo"]
    assert (info["id"], info["secret"]) == (photo["id"], photo["secret"])
    assert info["owner"]["nsid"] == photo["owner"]
    sizes = (await sandbox.flickr("flickr.photos.getSizes", photo_id=photo["id"]))["sizes"]
    labels = [s["label"] for s in sizes["size"]]
    assert labels[0] == "Square"
    assert labels[-1] == "Original"
    assert sizes["size"][0]["source"].endswith(f"{photo['id']}_{photo['secret']}_s.jpg")


@pytest.mark.parametrize("photo_id", ["120", "abc", "", "-5"])
@pytest.mark.parametrize(
    "method", ["flickr.photos.getInfo", "flickr.photos.getSizes", "flickr.photos.delete"]
)
async def test_unknown_photo_ids_are_code_1(sandbox: Sandbox, method: str, photo_id: str) -> None:
    assert await sandbox.flickr(method, photo_id=photo_id) == fail(1, "Photo not found")


async def test_set_meta_changes_title_and_needs_title_or_description(sandbox: Sandbox) -> None:
    needs = fail(2, "At least one of title or description must be set")
    assert await sandbox.flickr("flickr.photos.setMeta", photo_id="77") == needs
    assert await sandbox.flickr("flickr.photos.setMeta", photo_id="77", title="New") == {"stat": "ok"}
    assert await sandbox.flickr("flickr.photos.setMeta", photo_id="77", description="D") == {"stat": "ok"}
    info = (await sandbox.flickr("flickr.photos.getInfo", photo_id="77"))["photo"]
    assert (info["title"], info["description"]) == ({"_content": "New"}, {"_content": "D"})


async def test_delete_makes_the_photo_unknown(sandbox: Sandbox) -> None:
    assert await sandbox.flickr("flickr.photos.delete", photo_id="77") == {"stat": "ok"}
    assert await sandbox.flickr("flickr.photos.getInfo", photo_id="77") == fail(1, "Photo not found")


async def test_write_success_in_xml_is_an_empty_rsp(sandbox: Sandbox) -> None:
    reply = await sandbox.call({"method": "flickr.photos.setMeta", "photo_id": "3", "title": "x"}, how="form")
    assert reply.text.endswith('<rsp stat="ok" />')


# --- faults ---------------------------------------------------------------------------------------


async def test_429_three_times_then_ok(sandbox: Sandbox) -> None:
    status, fault = await sandbox.control(
        "POST",
        "/faults",
        {"method": "flickr.photos.search", "kind": "http_status", "status": 429, "times": 3},
    )
    assert status == 201
    assert fault["id"]
    for _ in range(3):
        reply = await sandbox.call({"method": "flickr.photos.search", "text": "a", **JSON})
        assert (reply.status, reply.content_type) == (429, "text/html")
        assert "<h1>429 Too Many Requests</h1>" in reply.text
    assert (await sandbox.flickr("flickr.test.echo"))["stat"] == "ok"  # other methods were never affected
    assert (await sandbox.flickr("flickr.photos.search", text="a"))["stat"] == "ok"
    assert (await sandbox.control("GET", "/faults"))[1][0]["times"] == 0


async def test_5xx_fault_answers_a_short_html_page(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "http_status", "status": 503})
    reply = await sandbox.call({"method": "flickr.test.echo", **JSON})
    assert (reply.status, reply.content_type) == (503, "text/html")
    assert "503 Service Unavailable" in reply.text
    await sandbox.control("POST", "/faults", {"kind": "http_status", "status": 599})
    assert "599 Error" in (await sandbox.call({"method": "flickr.test.echo", **JSON})).text


async def test_flickr_error_fault_is_in_the_envelope(sandbox: Sandbox) -> None:
    await sandbox.control(
        "POST", "/faults", {"method": "flickr.test.login", "kind": "flickr_error", "code": 105}
    )
    assert await sandbox.flickr("flickr.test.login") == fail(105, "Service currently unavailable")
    await sandbox.control("POST", "/faults", {"kind": "flickr_error", "code": 106})
    assert await sandbox.flickr("flickr.test.login") == fail(106, "Write operation failed")
    await sandbox.control("POST", "/faults", {"kind": "flickr_error", "code": 10, "message": "Search down"})
    assert await sandbox.flickr("flickr.test.login") == fail(10, "Search down")
    assert (await sandbox.flickr("flickr.test.login"))["stat"] == "ok"


async def test_latency_fault_delays_then_answers(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "latency", "latency_ms": 300})
    started = time.monotonic()
    assert (await sandbox.flickr("flickr.test.login"))["stat"] == "ok"
    assert time.monotonic() - started >= 0.3


async def test_drop_fault_closes_the_connection_without_an_answer(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "drop"})
    # POST: aiohttp's client silently retries an idempotent request (GET) once after a disconnect.
    params = {"method": "flickr.test.echo", "api_key": DEMO_CONSUMER_KEY}
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sandbox.session.post(sandbox.rest_url, data=params)
    calls = (await sandbox.control("GET", "/calls"))[1]
    assert calls[-1]["http_status"] is None
    assert (await sandbox.flickr("flickr.test.echo"))["stat"] == "ok"


async def test_drop_fault_twice_defeats_the_client_retry_of_a_get(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "drop", "times": 2})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sandbox.session.get(sandbox.rest_url, params={"method": "flickr.test.echo"})
    assert [c["http_status"] for c in (await sandbox.control("GET", "/calls"))[1]] == [None, None]


async def test_fault_with_times_minus_one_lasts_until_cleared(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "flickr_error", "times": -1})
    for _ in range(3):
        assert (await sandbox.flickr("flickr.test.echo"))["code"] == 105
    assert (await sandbox.control("DELETE", "/faults"))[0] == 204
    assert (await sandbox.flickr("flickr.test.echo"))["stat"] == "ok"


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "explode"},
        {"method": "x"},
        {"kind": "http_status", "status": 200},
        {"kind": "latency", "latency_ms": -1},
        {"kind": "drop", "times": 0},
        {"kind": "drop", "times": True},
        {"kind": "drop", "method": 5},
        ["kind", "drop"],
    ],
)
async def test_invalid_fault_plans_are_400(sandbox: Sandbox, body: Any) -> None:
    status, answer = await sandbox.control("POST", "/faults", body)
    assert status == 400
    assert answer["error"]


# --- control interface and call log ---------------------------------------------------------------


async def test_call_log_records_each_call_without_signature(sandbox: Sandbox) -> None:
    await sandbox.flickr("flickr.test.echo", foo="1")
    await sandbox.flickr("flickr.nope", None)
    await sandbox.flickr("flickr.test.login", APP_ONLY)
    calls = (await sandbox.control("GET", "/calls"))[1]
    assert [c["method"] for c in calls] == ["flickr.test.echo", "flickr.nope", "flickr.test.login"]
    echo = calls[0]
    assert (echo["http_status"], echo["stat"], echo["code"]) == (200, "ok", None)
    assert (echo["consumer_key"], echo["token"]) == (DEMO_CONSUMER_KEY, DEMO_TOKEN)
    assert echo["params"]["foo"] == "1"
    assert "oauth_nonce" in echo["params"]
    assert "oauth_signature" not in echo["params"]
    assert isinstance(echo["ts"], float)
    assert (calls[1]["stat"], calls[1]["code"], calls[1]["consumer_key"]) == ("fail", 112, None)
    assert (calls[2]["code"], calls[2]["token"]) == (99, None)
    only = (await sandbox.control("GET", "/calls?method=flickr.test.login"))[1]
    assert [c["code"] for c in only] == [99]
    assert (await sandbox.control("DELETE", "/calls"))[0] == 204
    assert (await sandbox.control("GET", "/calls"))[1] == []


async def test_call_log_records_http_faults_and_oauth_401s_without_stat(sandbox: Sandbox) -> None:
    await sandbox.control("POST", "/faults", {"kind": "http_status", "status": 429})
    await sandbox.call({"method": "flickr.test.echo"})
    await sandbox.call({"method": "flickr.test.echo"}, timestamp=1)
    calls = (await sandbox.control("GET", "/calls"))[1]
    assert [(c["http_status"], c["stat"], c["code"]) for c in calls] == [(429, None, None), (401, None, None)]


async def test_reset_forgets_everything_but_the_seeds(sandbox: Sandbox) -> None:
    creds = await add_token(sandbox, "write")
    await sandbox.control("POST", "/apps", {"consumer_key": "k2", "consumer_secret": "s2"})
    await sandbox.control("POST", "/faults", {"kind": "latency", "times": -1})
    await sandbox.flickr("flickr.photos.delete", photo_id="9")
    assert (await sandbox.control("POST", "/reset"))[0] == 204
    assert (await sandbox.control("GET", "/calls"))[1] == []
    assert (await sandbox.control("GET", "/faults"))[1] == []
    assert await sandbox.flickr("flickr.test.login", creds) == fail(98, "Invalid auth token")
    assert await sandbox.flickr("flickr.test.echo", Credentials("k2", "s2")) == fail(
        100, "Invalid API Key (Key not found)"
    )
    assert (await sandbox.flickr("flickr.photos.getInfo", photo_id="9"))["stat"] == "ok"
    assert (await sandbox.flickr("flickr.people.getInfo", user_id=DEMO_USER_NSID))["stat"] == "ok"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/apps", {"consumer_key": "k"}),
        ("/apps", {"consumer_key": 1, "consumer_secret": "s"}),
        (
            "/tokens",
            {"token": "t", "token_secret": "s", "user_nsid": "1@N00", "username": "u", "perms": "admin"},
        ),
        (
            "/tokens",
            {
                "token": "t",
                "token_secret": "s",
                "user_nsid": "1@N00",
                "username": "u",
                "perms": "read",
                "consumer_key": "?",
            },
        ),
        ("/tokens", {"token": "t", "perms": "read"}),
    ],
)
async def test_invalid_registrations_are_400(sandbox: Sandbox, path: str, body: Any) -> None:
    status, answer = await sandbox.control("POST", path, body)
    assert status == 400
    assert answer["error"]


async def test_non_json_control_body_is_400(sandbox: Sandbox) -> None:
    async with sandbox.session.post(f"{sandbox.base}/_sandbox/apps", data=b"{nope") as response:
        assert response.status == 400
        assert "not JSON" in (await response.json())["error"]


async def test_health_answers_200(sandbox: Sandbox) -> None:
    assert await sandbox.control("GET", "/health") == (200, {"status": "ok"})


async def test_state_without_demo_seed_knows_no_app() -> None:
    runner, port = await start(SandboxState())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/services/rest/"
            params = {"method": "flickr.test.echo", "api_key": DEMO_CONSUMER_KEY, **JSON}
            async with session.get(url, params=params) as response:
                assert (await response.json())["code"] == 100
    finally:
        await runner.cleanup()


# --- the shared method table and the pure pieces ----------------------------------------------------


def test_every_sandbox_method_has_a_row_in_the_shared_perm_table() -> None:
    assert set(METHODS) <= set(flickr_methods.METHOD_PERMS)


@pytest.mark.parametrize(
    ("method", "perm", "write", "search"),
    [
        ("flickr.photos.search", "none", False, True),
        ("flickr.photos.getRecent", "none", False, True),
        ("flickr.groups.search", "none", False, True),
        ("flickr.test.login", "read", False, False),
        ("flickr.photos.setMeta", "write", True, False),
        ("flickr.photos.delete", "delete", True, False),
        ("flickr.something.new", "write", True, False),  # unknown: assume it writes
    ],
)
def test_method_table_knows_writes_and_searches(method: str, perm: str, write: bool, search: bool) -> None:
    assert flickr_methods.required_perm(method) == perm
    assert flickr_methods.is_write(method) is write
    assert flickr_methods.is_search(method) is search


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [("delete", "write", True), ("write", "write", True), ("read", "write", False), ("bogus", "none", False)],
)
def test_perms_nest_delete_over_write_over_read(granted: str, required: str, allowed: bool) -> None:
    assert flickr_methods.perm_allows(granted, required) is allowed


def test_login_method_alone_refuses_a_call_without_token() -> None:
    with pytest.raises(FlickrFault, match="99"):
        login(Call("flickr.test.login", {}, None, SandboxState()))


def test_xml_rendering_follows_flickrs_json_conversion_rules() -> None:
    a = {"flag": True, "off": False, "none": None, "b": [{"_content": "x"}, {}]}
    doc = {"stat": "ok", "count": 3, "a": a}
    assert to_xml(doc) == '<rsp stat="ok"><count>3</count><a flag="1" off="0" none=""><b>x</b><b /></a></rsp>'


# --- conformance: requests signed by oauthlib's own Client ----------------------------------------


def _oauthlib_client(signature_type: str) -> Client:
    return Client(
        DEMO_CONSUMER_KEY,
        client_secret=DEMO_CONSUMER_SECRET,
        resource_owner_key=DEMO_TOKEN,
        resource_owner_secret=DEMO_TOKEN_SECRET,
        signature_type=signature_type,
    )


@pytest.mark.parametrize("path", ["/services/rest", "/services/rest/"])
@pytest.mark.parametrize("signature_type", [SIGNATURE_TYPE_AUTH_HEADER, SIGNATURE_TYPE_QUERY])
async def test_oauthlib_signed_get_is_accepted(sandbox: Sandbox, signature_type: str, path: str) -> None:
    query = urlencode({"method": "flickr.test.echo", **JSON, "q": "ö ~!*'()", "e": ""})
    uri, headers, _ = _oauthlib_client(signature_type).sign(
        f"{sandbox.base}{path}?{query}", http_method="GET"
    )
    async with sandbox.session.get(URL(uri, encoded=True), headers=headers) as response:
        answer = await response.json()
    assert answer["q"] == {"_content": "ö ~!*'()"}
    assert answer["e"] == {"_content": ""}


@pytest.mark.parametrize("signature_type", [SIGNATURE_TYPE_AUTH_HEADER, SIGNATURE_TYPE_BODY])
async def test_oauthlib_signed_form_post_is_accepted(sandbox: Sandbox, signature_type: str) -> None:
    body = {"method": "flickr.photos.setMeta", **JSON, "photo_id": "42", "title": "Grüße & mehr+"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    uri, headers, signed_body = _oauthlib_client(signature_type).sign(
        sandbox.rest_url, http_method="POST", body=body, headers=form
    )
    # With AUTH_HEADER oauthlib hands the body back as the dict it was given.
    data = signed_body if isinstance(signed_body, str) else urlencode(signed_body)
    async with sandbox.session.post(uri, data=data.encode("utf-8"), headers=headers) as response:
        assert await response.json() == {"stat": "ok"}
    info = await sandbox.flickr("flickr.photos.getInfo", photo_id="42")
    assert info["photo"]["title"] == {"_content": "Grüße & mehr+"}


async def test_oauthlib_signature_with_wrong_secret_is_refused(sandbox: Sandbox) -> None:
    client = Client(
        DEMO_CONSUMER_KEY, client_secret="bad", resource_owner_key=DEMO_TOKEN, resource_owner_secret="bad"
    )
    uri, headers, _ = client.sign(f"{sandbox.rest_url}?method=flickr.test.login&format=json&nojsoncallback=1")
    async with sandbox.session.get(URL(uri, encoded=True), headers=headers) as response:
        assert await response.json() == fail(96, "Invalid signature")


# --- the process -----------------------------------------------------------------------------------


async def test_python_m_sandbox_prints_ready_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandbox",
        "--port",
        "0",
        "--seed-demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        word, host, port = line.split()
        assert (word, host) == ("READY", "127.0.0.1")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/_sandbox/health") as response:
                assert response.status == 200
            params = oauth1.signed_params(
                "GET", f"http://127.0.0.1:{port}/services/rest", {"method": "flickr.test.login", **JSON}, DEMO
            )
            async with session.get(f"http://127.0.0.1:{port}/services/rest", params=params) as response:
                assert (await response.json())["user"]["id"] == DEMO_USER_NSID
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
        assert DEMO_CONSUMER_SECRET not in logs
        assert DEMO_TOKEN_SECRET not in logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
