"""Client authentication end to end: API keys, HMAC signing, per-key limits, IP allow-lists, audit.

Real gateway (in process), real Redis and SecantusDB, a real REST edge dialing
the gateway over a channel that carries no credentials of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
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
from google.rpc import error_details_pb2

from cli.main import main as cli_main
from common import auditlog, signing
from common.apikeys import ApiKeyStore
from common.keys import job_state
from common.settings import Settings
from common.vault import LocalKeyProvider, Vault
from edge import app as edge_app
from flickrhub.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, keys_pb2, keys_pb2_grpc
from gateway import identity
from gateway.audit import AuditWriter
from gateway.authn import client_ip
from gateway.ratelimit import RATE_LIMITED
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, seed_demo_token, stack_settings
from tests.helpers.rich import reason, status_of
from tests.helpers.uploads import upload_end

SUBMIT = "/flickrhub.v1.JobService/SubmitJob"
ECHO = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"a": "1"})


@dataclass
class Env:
    """The stack, a credential-less channel and stub, and a REST edge on that channel."""

    stack: Stack
    raw: grpc.aio.Channel
    jobs: jobs_pb2_grpc.JobServiceAsyncStub
    admin: keys_pb2_grpc.ApiKeyServiceAsyncStub
    http: aiohttp.ClientSession
    edge: str

    @property
    def client_key(self) -> str:
        assert self.stack.keys is not None
        return self.stack.keys.client_key

    @property
    def admin_key(self) -> str:
        assert self.stack.keys is not None
        return self.stack.keys.admin_key

    async def new_key(self, **fields: Any) -> keys_pb2.ApiKeySecret:
        fields.setdefault("name", "test key")
        fields.setdefault("user_ids", [DEMO_USER])
        secret: keys_pb2.ApiKeySecret = await self.admin.CreateApiKey(keys_pb2.CreateApiKeyRequest(**fields))
        return secret


@pytest_asyncio.fixture
async def env(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Env]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, audit_batch_ms=300.0)
    await seed_demo_token(settings)
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        raw = stack.unauthenticated_channel()
        app = edge_app.create_app(Settings.from_env({}), raw)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as http:
                yield Env(
                    stack,
                    raw,
                    jobs_pb2_grpc.JobServiceStub(raw),
                    keys_pb2_grpc.ApiKeyServiceStub(stack.channel),
                    http,
                    f"http://127.0.0.1:{port}",
                )
        finally:
            await runner.cleanup()
            await raw.close()


def _bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def _code(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def _rest(env: Env, method: str, path: str, *, headers: dict[str, str], body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {**headers, **({"Content-Type": "application/json"} if data is not None else {})}
    async with env.http.request(method, env.edge + path, data=data, headers=hdrs) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_bearer_and_x_api_key_work_over_grpc_and_rest(env: Env) -> None:
    by_bearer = await env.jobs.SubmitJob(ECHO, metadata=_bearer(env.client_key))
    by_header = await env.jobs.SubmitJob(ECHO, metadata=[("x-api-key", env.client_key)])
    status, _, body = await _rest(
        env,
        "POST",
        "/v1/jobs",
        headers={"Authorization": f"Bearer {env.client_key}"},
        body={"user_id": DEMO_USER, "method": "flickr.test.echo"},
    )
    assert status == 200, body
    status, _, got = await _rest(
        env, "GET", f"/v1/jobs/{by_bearer.job_id}", headers={"x-api-key": env.client_key}
    )
    assert status == 200 and got["job_id"] == by_bearer.job_id
    for job_id in (by_bearer.job_id, by_header.job_id, body["job_id"]):
        doc = await env.stack.store.get(job_id)
        assert doc is not None and doc["client_id"] == "democlient"  # the key id, not a header


async def test_missing_unknown_wrong_and_revoked_keys_are_401_without_saying_why(env: Env) -> None:
    missing = await _code(env.jobs.SubmitJob(ECHO))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in (
        missing.details() or ""
    )
    key_id = env.client_key.split("_")[1]
    wrong_secret = f"fhk_{key_id}_{'x' * 43}"
    unknown = f"fhk_nosuchkey_{'x' * 43}"
    revoked = await env.new_key()
    await env.admin.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=revoked.key.key_id))
    messages = set()
    for bad in (wrong_secret, unknown, "not-a-key", revoked.api_key):
        err = await _code(env.jobs.SubmitJob(ECHO, metadata=_bearer(bad)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        messages.add(err.details())
        status, _, body = await _rest(env, "GET", "/v1/jobs?user_id=demo-user", headers={"x-api-key": bad})
        assert status == 401 and body["message"] == "invalid credentials"
    assert messages == {"invalid credentials"}  # no hint which part was wrong
    status, _, _ = await _rest(env, "GET", "/v1/jobs?user_id=demo-user", headers={})
    assert status == 401


async def test_rotation_stops_the_old_secret_at_once_and_the_new_one_works(env: Env) -> None:
    first = await env.new_key()
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(first.api_key))  # cached as verified now
    rotated = await env.admin.RotateApiKey(keys_pb2.RotateApiKeyRequest(key_id=first.key.key_id))
    assert rotated.api_key != first.api_key and rotated.key.HasField("rotated_at")
    err = await _code(env.jobs.SubmitJob(ECHO, metadata=_bearer(first.api_key)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(rotated.api_key))
    listed = await env.admin.ListApiKeys(keys_pb2.ListApiKeysRequest())
    assert first.key.key_id in {k.key_id for k in listed.keys}


async def test_a_key_acting_for_another_user_is_refused_with_403(env: Env) -> None:
    await seed_demo_token(env.stack.settings, "someone-else")
    other = jobs_pb2.SubmitJobRequest(user_id="someone-else", method="flickr.test.echo")
    err = await _code(env.jobs.SubmitJob(other, metadata=_bearer(env.client_key)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "USER_NOT_ALLOWED"
    status, _, _ = await _rest(
        env,
        "POST",
        "/v1/jobs",
        headers={"x-api-key": env.client_key},
        body={"user_id": "someone-else", "method": "flickr.test.echo"},
    )
    assert status == 403
    theirs = await env.stack.jobs.SubmitJob(other)  # the admin key may act for every user
    for call in (
        env.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=theirs.job_id), metadata=_bearer(env.client_key)),
        env.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=theirs.job_id), metadata=_bearer(env.client_key)),
        env.jobs.ListJobs(jobs_pb2.ListJobsRequest(user_id="someone-else"), metadata=_bearer(env.client_key)),
    ):
        assert (await _code(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    doc = await env.stack.store.get(theirs.job_id)
    assert doc is not None and doc["status"] == "queued"  # the refused cancel changed nothing


async def _stream_code(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    return err.value


async def test_a_job_is_seen_by_the_client_that_submitted_it_and_by_admins_only(env: Env) -> None:
    """GetJob, WatchJob, CancelJob and the legacy status route: another client's job is NOT_FOUND."""
    a = await env.new_key(name="client a")
    b = await env.new_key(name="client b")  # bound to the same user
    job = await env.jobs.SubmitJob(ECHO, metadata=_bearer(a.api_key))
    missing = "f" * 32
    get, watch = jobs_pb2.GetJobRequest(job_id=job.job_id), jobs_pb2.WatchJobRequest(job_id=job.job_id)
    seen = await env.jobs.GetJob(get, metadata=_bearer(a.api_key))
    assert seen.client_id == a.key.key_id
    assert (await env.jobs.GetJob(get, metadata=_bearer(env.admin_key))).job_id == job.job_id
    watching = env.jobs.WatchJob(watch, metadata=_bearer(env.admin_key))
    first = await watching.read()
    watching.cancel()  # the job stays queued: its stream would not end by itself
    assert isinstance(first, jobs_pb2.Job) and first.job_id == job.job_id
    other = b.api_key
    for err in (
        await _code(env.jobs.GetJob(get, metadata=_bearer(other))),
        await _stream_code(env.jobs.WatchJob(watch, metadata=_bearer(other))),
        await _code(
            env.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id), metadata=_bearer(other))
        ),
    ):
        assert (err.code(), reason(err)) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    # Over REST, the same answer as for a job that does not exist.
    for method, path in (
        ("GET", "/v1/jobs/{}"),
        ("GET", "/v1/jobs/{}:watch"),
        ("POST", "/v1/jobs/{}:cancel"),
    ):
        answers = []
        for job_id in (job.job_id, missing):
            status, _, body = await _rest(
                env,
                method,
                path.format(job_id),
                headers={"x-api-key": other},
                body={} if method == "POST" else None,
            )
            answers.append((status, body["code"], body["message"].replace(job_id, "…")))
        assert answers[0] == answers[1] and answers[0][0] == 404, (path, answers)
    status, _, body = await _rest(
        env,
        "POST",
        "/api/v1/flickr/jobs/status",
        headers={"x-api-key": other},
        body={"job_id": job.job_id, "user_id": DEMO_USER},
    )
    assert (status, body["error"]["code"]) == (404, "ERR_JOB_NOT_FOUND")
    doc = await env.stack.store.get(job.job_id)
    assert doc is not None and doc["status"] == "queued"  # the refused cancels changed nothing
    status, _, body = await _rest(env, "GET", f"/v1/jobs/{job.job_id}", headers={"x-api-key": a.api_key})
    assert status == 200 and body["client_id"] == a.key.key_id
    status, _, body = await _rest(
        env,
        "POST",
        "/api/v1/flickr/jobs/status",
        headers={"x-api-key": a.api_key},
        body={"job_id": job.job_id, "user_id": DEMO_USER},
    )
    assert status == 200 and body["data"]["id"] == job.job_id
    cancel = jobs_pb2.CancelJobRequest(job_id=job.job_id)
    assert (
        await env.jobs.CancelJob(cancel, metadata=_bearer(a.api_key))
    ).state == jobs_pb2.JOB_STATE_CANCELLED


async def test_a_job_without_a_client_is_seen_by_admins_only(env: Env) -> None:
    """Jobs written before jobs named their client (or by a path without a key) have no owner to match."""
    a = await env.new_key(name="client a")
    job = await env.jobs.SubmitJob(ECHO, metadata=_bearer(a.api_key))
    await env.stack.store.jobs.update_one({"job_id": job.job_id}, {"$unset": {"client_id": ""}})
    await env.stack.gateway.redis.delete(job_state(job.job_id))  # the hot copy still names the client
    get = jobs_pb2.GetJobRequest(job_id=job.job_id)
    err = await _code(env.jobs.GetJob(get, metadata=_bearer(a.api_key)))
    assert (err.code(), reason(err)) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    listed = await env.jobs.ListJobs(jobs_pb2.ListJobsRequest(user_id=DEMO_USER), metadata=_bearer(a.api_key))
    assert job.job_id not in {j.job_id for j in listed.jobs}  # ListJobs agrees
    assert (await env.jobs.GetJob(get, metadata=_bearer(env.admin_key))).client_id == ""
    listed = await env.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(user_id=DEMO_USER), metadata=_bearer(env.admin_key)
    )
    assert job.job_id in {j.job_id for j in listed.jobs}


async def test_admin_rpcs_need_an_admin_key(env: Env) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(env.raw)
    keys = keys_pb2_grpc.ApiKeyServiceStub(env.raw)
    for call in (
        admin.GetQueueStats(admin_pb2.GetQueueStatsRequest(), metadata=_bearer(env.client_key)),
        keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=_bearer(env.client_key)),
    ):
        err = await _code(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "ADMIN_REQUIRED"
    await admin.GetQueueStats(admin_pb2.GetQueueStatsRequest(), metadata=_bearer(env.admin_key))
    status, _, _ = await _rest(env, "GET", "/v1/admin/queues", headers={"x-api-key": env.client_key})
    assert status == 403
    status, _, body = await _rest(env, "GET", "/v1/admin/keys", headers={"x-api-key": env.admin_key})
    assert status == 200 and {"democlient", "demoadmin"} <= {k["key_id"] for k in body["keys"]}
    assert all("secret" not in json.dumps(k) for k in body["keys"])
    bad = await _code(env.admin.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="x", user_ids=["*"])))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT  # "*" only for admin keys


async def test_flickrs_oauth_redirect_is_the_one_route_served_without_a_credential(env: Env) -> None:
    # The contract marks AuthorizationCallback (flickrhub.v1.no_credential): the servicer itself answers.
    status, _, body = await _rest(env, "GET", "/v1/auth/callback", headers={})
    assert status == 400, body
    assert "oauth_token" in json.dumps(body["details"])
    status, _, body = await _rest(env, "POST", "/v1/auth:start", headers={}, body={"perms": "read"})
    assert status == 401, body


async def test_ip_allow_list_uses_the_client_address_the_trusted_edge_saw(env: Env) -> None:
    fenced = await env.new_key(ip_allowlist=["203.0.113.0/24"])
    err = await _code(env.jobs.SubmitJob(ECHO, metadata=_bearer(fenced.api_key)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "IP_NOT_ALLOWED"
    # The peer (loopback) is a trusted proxy: its x-forwarded-for names the client.
    await env.jobs.SubmitJob(ECHO, metadata=[*_bearer(fenced.api_key), ("x-forwarded-for", "203.0.113.9")])
    headers = {"x-api-key": fenced.api_key}
    status, _, _ = await _rest(env, "GET", "/v1/jobs?user_id=demo-user", headers=headers)
    assert status == 403
    status, _, _ = await _rest(
        env, "GET", "/v1/jobs?user_id=demo-user", headers={**headers, "X-Forwarded-For": "203.0.113.9"}
    )
    assert status == 200


def test_forwarded_for_counts_only_from_trusted_proxies_and_from_the_right() -> None:
    trusted = Settings.from_env({}).trusted_proxy_networks
    assert client_ip("ipv4:198.51.100.7:4000", "203.0.113.9", trusted) == ("198.51.100.7", False)
    assert client_ip("ipv4:127.0.0.1:4000", "203.0.113.9", trusted) == ("203.0.113.9", True)
    # A client's own x-forwarded-for sits left of what the edge appended: the edge's view wins.
    assert client_ip("ipv4:127.0.0.1:4000", "10.9.9.9, 198.51.100.7, 127.0.0.1", trusted)[0] == "198.51.100.7"
    assert client_ip("ipv6:[::1]:4000", "", trusted) == ("::1", True)


def _signed_grpc(env: Env, request: jobs_pb2.SubmitJobRequest, **kw: Any) -> list[tuple[str, str]]:
    assert env.stack.keys is not None
    keys = env.stack.keys
    body = request.SerializeToString()
    return list(
        signing.sign_headers(
            keys.client_key_id, keys.client_signing_secret, "POST", SUBMIT, body=body, **kw
        ).items()
    )


async def test_hmac_over_grpc_signs_the_exact_request_and_refuses_skew_replay_and_tampering(env: Env) -> None:
    md = _signed_grpc(env, ECHO)
    await env.jobs.SubmitJob(ECHO, metadata=md)
    replay = await _code(env.jobs.SubmitJob(ECHO, metadata=md))
    assert replay.code() == grpc.StatusCode.UNAUTHENTICATED and reason(replay) == "REPLAYED"
    old = _signed_grpc(env, ECHO, now=time.time() - 301)
    skew = await _code(env.jobs.SubmitJob(ECHO, metadata=old))
    assert reason(skew) == "TIMESTAMP_SKEW"
    tampered = jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"a": "2"})
    forged = await _code(env.jobs.SubmitJob(tampered, metadata=_signed_grpc(env, ECHO)))
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED and forged.details() == "invalid credentials"
    # Edge metadata from a direct client does not change what is checked: it is only for REST.
    assert env.stack.keys is not None
    bad_secret = signing.sign_headers(
        env.stack.keys.client_key_id, "not-the-secret", "POST", SUBMIT, body=ECHO.SerializeToString()
    )
    assert (
        await _code(env.jobs.SubmitJob(ECHO, metadata=list(bad_secret.items())))
    ).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_hmac_over_rest_covers_method_path_query_and_body(env: Env) -> None:
    assert env.stack.keys is not None
    kid, secret = env.stack.keys.client_key_id, env.stack.keys.client_signing_secret
    body = json.dumps({"user_id": DEMO_USER, "method": "flickr.test.echo"}).encode()
    headers = signing.sign_headers(kid, secret, "POST", "/v1/jobs", body=body)
    hdrs = {**headers, "Content-Type": "application/json"}
    async with env.http.post(env.edge + "/v1/jobs", data=body, headers=hdrs) as resp:
        assert resp.status == 200, await resp.text()
    async with env.http.post(env.edge + "/v1/jobs", data=body, headers=hdrs) as resp:
        assert resp.status == 401 and (await resp.json())["message"].endswith("(nonce replayed)")
    other_body = json.dumps({"user_id": DEMO_USER, "method": "flickr.test.login"}).encode()
    hdrs = {
        **signing.sign_headers(kid, secret, "POST", "/v1/jobs", body=body),
        "Content-Type": "application/json",
    }
    async with env.http.post(env.edge + "/v1/jobs", data=other_body, headers=hdrs) as resp:
        assert resp.status == 401  # body tampered
    query = "user_id=demo-user&page_size=2"
    ok = signing.sign_headers(kid, secret, "GET", "/v1/jobs", query="page_size=2&user_id=demo-user")
    async with env.http.get(f"{env.edge}/v1/jobs?{query}", headers=ok) as resp:
        assert resp.status == 200, await resp.text()  # the query is signed sorted, sent in any order
    q = signing.sign_headers(kid, secret, "GET", "/v1/jobs", query=query)
    async with env.http.get(f"{env.edge}/v1/jobs?user_id=demo-user&page_size=3", headers=q) as resp:
        assert resp.status == 401  # query tampered
    p = signing.sign_headers(kid, secret, "GET", "/v1/jobs/abc")
    async with env.http.get(f"{env.edge}/v1/jobs/abd", headers=p) as resp:
        assert resp.status == 401  # path tampered
    stale = signing.sign_headers(kid, secret, "GET", "/v1/jobs", query=query, now=time.time() + 400)
    async with env.http.get(f"{env.edge}/v1/jobs?{query}", headers=stale) as resp:
        assert resp.status == 401


def _sample(cls: str) -> float:
    return RATE_LIMITED.labels(**{"class": cls})._value.get()  # type: ignore[no-any-return]


async def test_rate_limit_per_key_answers_resource_exhausted_and_429_with_retry_after(env: Env) -> None:
    limited = await env.new_key(rate_limit_per_min=3)
    md = _bearer(limited.api_key)
    before = _sample("read")
    for _ in range(3):
        await env.jobs.SubmitJob(ECHO, metadata=md)
    err = await _code(env.jobs.SubmitJob(ECHO, metadata=md))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(err) == "RATE_LIMITED"
    types = {d.type_url.rsplit("/", 1)[-1] for d in status_of(err).details}
    assert {"google.rpc.RetryInfo", "google.rpc.QuotaFailure"} <= types
    retry = error_details_pb2.RetryInfo()
    next(d for d in status_of(err).details if d.type_url.endswith("RetryInfo")).Unpack(retry)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 20  # 60 s / 3 per minute
    status, headers, _ = await _rest(
        env, "GET", "/v1/jobs?user_id=demo-user", headers={"x-api-key": limited.api_key}
    )
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert _sample("read") >= before + 2
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(env.client_key))  # another key is not affected


async def test_class_limits_apply_to_their_class_only(env: Env) -> None:
    key = await env.new_key(class_limits=keys_pb2.ClassLimits(read=2))
    md = _bearer(key.api_key)
    listing = jobs_pb2.ListJobsRequest(user_id=DEMO_USER)
    await env.jobs.ListJobs(listing, metadata=md)
    await env.jobs.ListJobs(listing, metadata=md)
    err = await _code(env.jobs.ListJobs(listing, metadata=md))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    write = jobs_pb2.SubmitJobRequest(
        user_id=DEMO_USER, method="flickr.photos.addTags", params={"photo_id": "1", "tags": "x"}
    )
    await env.jobs.SubmitJob(write, metadata=md)  # a write is not a read


async def test_a_verified_key_is_cached_so_the_next_call_pays_no_bcrypt(env: Env) -> None:
    authn = env.stack.gateway.authenticator
    key = await env.new_key()
    before, lookups = authn.bcrypt_checks, authn.lookups
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(key.api_key))
    assert authn.bcrypt_checks == before + 1
    for _ in range(5):
        await env.jobs.SubmitJob(ECHO, metadata=[("x-api-key", key.api_key)])
    assert authn.bcrypt_checks == before + 1
    assert authn.lookups == lookups + 1  # one indexed lookup by key id, then memory
    # When the cache entry expires under load, many calls share one lookup and no new bcrypt.
    authn._cache[key.key.key_id].expires = 0
    await asyncio.gather(*(env.jobs.SubmitJob(ECHO, metadata=_bearer(key.api_key)) for _ in range(20)))
    assert (authn.bcrypt_checks, authn.lookups) == (before + 1, lookups + 2)
    fresh = await env.new_key()
    await asyncio.gather(*(env.jobs.SubmitJob(ECHO, metadata=_bearer(fresh.api_key)) for _ in range(20)))
    assert authn.bcrypt_checks == before + 2  # twenty first calls, one bcrypt


async def test_every_call_is_audited_off_the_request_path_including_auth_failures(env: Env) -> None:
    audit = env.stack.mongo.audit_log
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(env.client_key))
    assert await audit.count_documents({}) == 0  # the answer came before the batch was written
    await _code(env.jobs.SubmitJob(ECHO, metadata=_bearer(f"fhk_democlient_{'y' * 43}")))
    for _ in range(50):
        if len(await auditlog.entries(audit)) >= 2:
            break
        await asyncio.sleep(0.1)
    ok = next(iter(await auditlog.entries(audit, {"outcome": "OK", "rpc": SUBMIT})), None)
    assert ok is not None and ok["key_id"] == "democlient" and ok["client_ip"] == "127.0.0.1"
    assert (
        ok["user_id_hash"]
        == hashlib.sha256(DEMO_USER.encode()).hexdigest()[:32]
        == identity.user_id_hash(DEMO_USER)
    )
    assert ok["latency_ms"] >= 0 and ok["auth"] == "bearer"
    failed = next(iter(await auditlog.entries(audit, {"outcome": "UNAUTHENTICATED"})), None)
    assert (
        failed is not None and failed["key_id"] == "democlient" and failed["reason"] == "INVALID_CREDENTIALS"
    )
    assert DEMO_USER not in json.dumps([ok, failed], default=str)


async def test_the_entries_of_one_write_share_one_bucket_document(env: Env) -> None:
    writer = AuditWriter(env.stack.mongo.audit_log, max_queue=1000, batch_ms=1.0)
    for i in range(auditlog.MAX_ENTRIES + 30):
        writer.record(
            rpc=f"r{i}", key_id="k", client_ip="", outcome="OK", latency_ms=0, user_id_hashes=[], auth="none"
        )
    await writer.stop()
    buckets = [doc async for doc in env.stack.mongo.audit_log.find({}).sort("created_at", 1)]
    assert [b["count"] for b in buckets] == [auditlog.MAX_ENTRIES, 30]
    assert all(len(b["entries"]) == b["count"] for b in buckets)
    assert all(b["created_at"] == b["entries"][0]["created_at"] <= b["until"] for b in buckets)
    rpcs = [e["rpc"] for e in await auditlog.entries(env.stack.mongo.audit_log)]
    assert rpcs == [f"r{i}" for i in range(auditlog.MAX_ENTRIES + 30)]
    with pytest.raises(ValueError, match="at least one entry"):
        auditlog.bucket([])


async def test_a_full_audit_queue_drops_and_counts_instead_of_blocking(env: Env) -> None:
    writer = AuditWriter(env.stack.mongo.audit_log, max_queue=2, batch_ms=1.0)
    for _ in range(5):
        writer.record(
            rpc="r", key_id="k", client_ip="", outcome="OK", latency_ms=0, user_id_hashes=[], auth="none"
        )
    assert writer.dropped == 3
    await writer.stop()
    assert writer.written == 2


async def test_secrets_are_never_stored_in_clear(env: Env) -> None:
    issued = await env.new_key()
    secret = issued.api_key.split("_", 2)[2]
    docs = [d async for d in env.stack.mongo.api_keys.find({})]
    dumped = json.dumps(docs, default=str)
    assert secret not in dumped and issued.signing_secret not in dumped
    for doc in docs:
        assert doc["secret_hash"].startswith("$2b$")
        assert set(doc["signing_secret"]) == {"v", "n", "c"}
    vault = Vault(LocalKeyProvider.from_settings(env.stack.settings))
    store = ApiKeyStore.from_settings(env.stack.mongo.api_keys, vault, env.stack.settings)
    mine = await store.find(issued.key.key_id)
    assert mine is not None and store.signing_secret(mine) == issued.signing_secret


async def test_keys_cli_creates_lists_rotates_and_revokes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = ["--gateway", f"127.0.0.1:{env.stack.gateway.port}", "--api-key", env.admin_key]

    async def cli(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(cli_main, list(argv), stdout=out, stderr=err)
        return code, out.getvalue() + err.getvalue()

    code, out = await cli(*gw, "keys", "create", "cli key", "--user-id", DEMO_USER, "--rate", "50")
    assert code == 0, out
    created = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("key_id", "api_key")))
    api_key, key_id = created["api_key"].strip(), created["key_id"].strip()
    await env.jobs.SubmitJob(ECHO, metadata=_bearer(api_key))
    code, out = await cli(*gw, "keys", "list")
    assert code == 0 and key_id in out and api_key not in out
    code, out = await cli(*gw, "keys", "rotate", key_id)
    assert code == 0 and "api_key" in out
    code, out = await cli(*gw, "keys", "revoke", key_id)
    assert code == 0 and f"revoked {key_id}" in out
    code, out = await cli("--gateway", gw[1], "--api-key", env.client_key, "keys", "list")
    assert code == 1 and "PERMISSION_DENIED" in out
    monkeypatch.setenv("MONGO_URL", env.stack.settings.mongo_url)
    monkeypatch.setenv("MONGO_DB", env.stack.settings.mongo_db)
    code, out = await cli("keys", "bootstrap-admin", "--name", "first admin")
    assert code == 0, out
    boot = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("api_key"))
    await admin_pb2_grpc.AdminServiceStub(env.raw).GetQueueStats(
        admin_pb2.GetQueueStatsRequest(), metadata=_bearer(boot)
    )


async def test_uploads_need_a_key_too_over_grpc_and_rest(env: Env) -> None:
    async def parts() -> AsyncIterator[jobs_pb2.UploadJobRequest]:
        yield jobs_pb2.UploadJobRequest(
            job=jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, target=jobs_pb2.TARGET_UPLOAD)
        )
        yield jobs_pb2.UploadJobRequest(chunk=b"\x89PNG" * 10)
        yield upload_end(b"\x89PNG" * 10)

    err = await _code(env.jobs.UploadJob(parts()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    form = aiohttp.FormData()
    form.add_field(
        "job", json.dumps({"user_id": DEMO_USER, "target": "TARGET_UPLOAD"}), content_type="application/json"
    )
    form.add_field("photo", b"\x89PNG" * 10, filename="p.png", content_type="image/png")
    async with env.http.post(env.edge + "/v1/uploads", data=form) as resp:
        assert resp.status == 401, await resp.text()
