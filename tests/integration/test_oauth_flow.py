"""OAuth authorization end to end: gateway (gRPC) and edge (REST) against the Flickr sandbox.

Real Redis, SecantusDB, sandbox over HTTP and gRPC; the user's approval is given
by posting the sandbox's approval form, as a browser would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from bson import json_util

from flickrhub.v1 import auth_pb2, jobs_pb2
from sandbox.state import DEMO_TOKEN
from tests.helpers.flickr_approve import decide
from tests.helpers.inproc import sandbox_calls
from tests.helpers.oauth_stack import AuthStack, auth_stack
from tests.helpers.rich import bad_fields, reason, result_of

FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


@pytest.fixture
def stores(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> tuple[str, ...]:
    return (redis_url, cache_redis_url, mongo_url, mongo_db_name)


@pytest_asyncio.fixture
async def oob(stores: tuple[str, ...]) -> AsyncIterator[AuthStack]:
    async with auth_stack(*stores) as running:
        yield running


async def _start(
    s: AuthStack, perms: str = "write", user_id: str = ""
) -> auth_pb2.StartAuthorizationResponse:
    return await s.auth.StartAuthorization(auth_pb2.StartAuthorizationRequest(perms=perms, user_id=user_id))


async def _approve_oob(s: AuthStack, perms: str = "write", user_id: str = "") -> tuple[str, str]:
    """Start, approve on the sandbox page; the request token and the verifier shown there."""
    started = await _start(s, perms, user_id)
    approval = await decide(s.http, started.authorize_url)
    assert approval.verifier, approval.text
    return started.request_token, approval.verifier


async def _authorize(s: AuthStack, perms: str = "write", user_id: str = "") -> auth_pb2.Authorization:
    token, verifier = await _approve_oob(s, perms, user_id)
    return await s.auth.CompleteAuthorization(
        auth_pb2.CompleteAuthorizationRequest(request_token=token, verifier=verifier)
    )


async def _complete_error(s: AuthStack, token: str, verifier: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.auth.CompleteAuthorization(
            auth_pb2.CompleteAuthorizationRequest(request_token=token, verifier=verifier)
        )
    return err.value


async def _wait_final(s: AuthStack, job_id: str, timeout: float = 15.0) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await s.stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in FINAL:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.05)


def _granted(s: AuthStack) -> list[tuple[str, str]]:
    """Every access token (and secret) the sandbox granted, oldest first (not the seeded demo token)."""
    return [(t.token, t.token_secret) for t in s.stack.sandbox.tokens.values() if t.token != DEMO_TOKEN]


async def test_oob_flow_creates_a_user_whose_jobs_run_with_the_new_token(oob: AuthStack) -> None:
    started = await _start(oob, "write")
    assert started.mode == "oob"
    assert started.authorize_url.startswith(f"{oob.stack.sandbox_url}/services/oauth/authorize?oauth_token=")
    assert started.authorize_url.endswith("&perms=write")
    assert started.expires_at.seconds > 0
    approval = await decide(oob.http, started.authorize_url)
    done = await oob.auth.CompleteAuthorization(
        auth_pb2.CompleteAuthorizationRequest(request_token=started.request_token, verifier=approval.verifier)
    )
    assert uuid.UUID(done.user_id)
    assert (done.user_nsid, done.username, done.fullname, done.perms) == (
        "10000001@N00",
        "flickrhub-demo",
        "FlickrHub Demo",
        "write",
    )
    token, _ = _granted(oob)[-1]
    submitted = await oob.stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=done.user_id, method="flickr.test.login")
    )
    job = await _wait_final(oob, submitted.job_id)
    assert job.state == jobs_pb2.JOB_STATE_COMPLETED, job.error
    assert result_of(job)["user"]["id"] == done.user_nsid
    assert (await sandbox_calls(oob.stack, "flickr.test.login"))[-1]["token"] == token


async def test_callback_flow_completes_through_the_edges_callback_route(stores: tuple[str, ...]) -> None:
    async with auth_stack(*stores, callback=True) as s:
        async with s.http.post(f"{s.edge}/v1/auth:start", json={"perms": "read"}) as resp:
            assert resp.status == 200, await resp.text()
            started = await resp.json()
        assert started["mode"] == "callback"
        approval = await decide(s.http, started["authorize_url"])
        assert approval.status == 302
        assert approval.location.startswith(
            f"{s.edge}/v1/auth/callback?oauth_token={started['request_token']}&"
        )
        # The browser follows Flickr's redirect to the edge, which completes the authorization.
        async with s.http.get(approval.location, allow_redirects=False) as resp:
            assert resp.status == 200, await resp.text()
            done = await resp.json()
        assert uuid.UUID(done["user_id"])
        assert (done["user_nsid"], done["perms"]) == ("10000001@N00", "read")
        doc = await s.stack.mongo.tokens.find_one({"user_id": done["user_id"]})
        assert doc is not None and doc["perms"] == "read" and doc["revoked"] is False
        # The original FlickrHub routes are bindings of the same RPCs, in the original's envelope.
        async with s.http.post(f"{s.edge}/api/v1/auth/start", json={"perms": "delete"}) as resp:
            assert resp.status == 200
            started = await resp.json()
            assert started["error"] is None and started["data"]["authorize_url"].endswith("&perms=delete")
        # Replaying the redirect is refused: the request was consumed.
        async with s.http.get(approval.location.replace("/v1/", "/api/v1/")) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["data"] is None and body["error"]["code"].startswith("ERR_")
            assert body["error"]["message"] == "authorization request already completed"


async def test_expired_request_is_refused(stores: tuple[str, ...]) -> None:
    async with auth_stack(*stores, auth_request_ttl_s=1) as s:
        token, verifier = await _approve_oob(s)
        await asyncio.sleep(1.3)
        err = await _complete_error(s, token, verifier)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "authorization request expired"
        assert reason(err) == "AUTH_REQUEST_EXPIRED"
        assert await s.stack.mongo.tokens.count_documents({}) == 0


async def test_reused_verifier_is_refused(oob: AuthStack) -> None:
    token, verifier = await _approve_oob(oob)
    await oob.auth.CompleteAuthorization(
        auth_pb2.CompleteAuthorizationRequest(request_token=token, verifier=verifier)
    )
    err = await _complete_error(oob, token, verifier)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "AUTH_REQUEST_USED"
    assert await oob.stack.mongo.tokens.count_documents({}) == 1


async def test_concurrent_completions_create_exactly_one_user(oob: AuthStack) -> None:
    token, verifier = await _approve_oob(oob)
    request = auth_pb2.CompleteAuthorizationRequest(request_token=token, verifier=verifier)
    results = await asyncio.gather(
        *(oob.auth.CompleteAuthorization(request) for _ in range(4)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, auth_pb2.Authorization)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1
    assert {r.code() for r in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert await oob.stack.mongo.tokens.count_documents({}) == 1


async def test_wrong_verifier_is_invalid_and_the_right_one_still_works(oob: AuthStack) -> None:
    token, verifier = await _approve_oob(oob)
    err = await _complete_error(oob, token, "999-999-999")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err) == {"verifier"}
    assert await oob.stack.mongo.tokens.count_documents({}) == 0
    done = await oob.auth.CompleteAuthorization(
        auth_pb2.CompleteAuthorizationRequest(request_token=token, verifier=verifier)
    )
    assert done.user_id


async def test_unknown_request_token_is_refused(oob: AuthStack) -> None:
    err = await _complete_error(oob, "72157000000000000-0123456789abcdef", "123-456-789")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "AUTH_REQUEST_UNKNOWN"


async def test_denied_authorization_creates_nothing(oob: AuthStack) -> None:
    started = await _start(oob, "read")
    approval = await decide(oob.http, started.authorize_url, decision="deny")
    assert not approval.verifier
    err = await _complete_error(oob, started.request_token, "123-456-789")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "FLICKR_AUTHORIZATION_DENIED"
    assert await oob.stack.mongo.tokens.count_documents({}) == 0


async def test_invalid_fields_are_listed_and_change_nothing(oob: AuthStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(oob, "admin", user_id="bad user")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"perms", "user_id"}
    err2 = await _complete_error(oob, "", "a b")
    assert bad_fields(err2) == {"request_token", "verifier"}
    async with oob.http.post(f"{oob.edge}/v1/auth:start", json={"perms": ""}) as resp:
        assert resp.status == 400
        body = await resp.json()
    violations = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["field_violations"][0]["field"] == "perms"
    async with oob.http.get(f"{oob.edge}/v1/admin/tokens", params={"page_size": "501"}) as resp:
        assert resp.status == 400
    assert await oob.stack.mongo.auth_requests.count_documents({}) == 0


async def test_reauthorization_keeps_the_user_id_and_updates_perms(oob: AuthStack) -> None:
    first = await _authorize(oob, "read")
    again = await _authorize(oob, "delete", user_id=first.user_id)
    assert again.user_id == first.user_id
    assert again.perms == "delete"
    docs = await oob.stack.mongo.tokens.find({}).to_list()
    assert [(d["user_id"], d["perms"]) for d in docs] == [(first.user_id, "delete")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(oob, "read", user_id="no-such-user")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_revoked_user_cannot_submit_jobs(oob: AuthStack) -> None:
    done = await _authorize(oob)
    async with oob.http.post(f"{oob.edge}/v1/admin/tokens/{done.user_id}:revoke", json={}) as resp:
        assert resp.status == 200, await resp.text()
        info = await resp.json()
    assert info["revoked"] is True
    assert info["user_id"] == done.user_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await oob.stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=done.user_id, method="flickr.test.login")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "TOKEN_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await oob.auth.RevokeToken(auth_pb2.RevokeTokenRequest(user_id="no-such-user"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_token_list_pages_and_never_shows_secrets(oob: AuthStack) -> None:
    users = [await _authorize(oob, perms) for perms in ("read", "write", "delete")]
    secrets = [part for pair in _granted(oob) for part in pair]
    assert len(secrets) == 6
    seen: list[dict[str, Any]] = []
    page_token = ""
    while True:
        params = {"page_size": "2", **({"page_token": page_token} if page_token else {})}
        async with oob.http.get(f"{oob.edge}/v1/admin/tokens", params=params) as resp:
            assert resp.status == 200
            raw = await resp.text()
        for secret in secrets:
            assert secret not in raw
        body = json.loads(raw)
        seen += body["tokens"]
        page_token = body.get("next_page_token", "")
        if not page_token:
            break
    assert sorted(t["user_id"] for t in seen) == sorted(u.user_id for u in users)
    assert {t["perms"] for t in seen} == {"read", "write", "delete"}
    assert all(t["key_version"] >= 1 and t["token_id_hash"] for t in seen)
    assert set(seen[0]) >= {"user_id", "user_nsid", "username", "perms", "created_at", "updated_at"}


async def test_no_token_or_secret_is_stored_in_clear(oob: AuthStack) -> None:
    await _authorize(oob)
    pending = await _start(oob, "read")  # one request still pending, its secret in the store
    async with oob.http.get(f"{oob.stack.sandbox_url}/_sandbox/oauth/pending") as resp:
        request_secret = next(
            p["oauth_token_secret"] for p in await resp.json() if p["oauth_token"] == pending.request_token
        )
    access_token, access_secret = _granted(oob)[-1]
    dumped = json_util.dumps(
        [
            *(await oob.stack.mongo.tokens.find({}).to_list()),
            *(await oob.stack.mongo.auth_requests.find({}).to_list()),
        ]
    )
    for clear in (access_token, access_secret, pending.request_token, request_secret):
        assert clear not in dumped
    assert await oob.stack.mongo.auth_requests.count_documents({}) == 2
