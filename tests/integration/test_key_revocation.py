"""Rotation and revocation reach every gateway replica at once, despite each one's cache of checks.

Two gateway apps share one Redis and one MongoDB, as replicas do. Both verify a key
(and cache the check for API_KEY_CACHE_S = 60 s); the key is then revoked or rotated
through one of them, and the other must refuse the old secret on its very next call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import bcrypt
import grpc
import pytest
import pytest_asyncio

from common import apikeys, keys, signing
from common.settings import Settings, SettingsError
from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc, keys_pb2, keys_pb2_grpc
from gateway.app import GatewayApp
from gateway.authn import Authenticator, Request
from tests.helpers.inproc import DEMO_USER, Stack, running_stack, stack_settings

LIST = jobs_pb2.ListJobsRequest(user_id=DEMO_USER)
LIST_PATH = "/flickrhub.v1.JobService/ListJobs"


@dataclass
class Replicas:
    """Gateway A (the stack's) and gateway B, each with a credential-less JobService stub."""

    stack: Stack
    b: GatewayApp
    jobs_a: jobs_pb2_grpc.JobServiceAsyncStub
    jobs_b: jobs_pb2_grpc.JobServiceAsyncStub
    admin_a: keys_pb2_grpc.ApiKeyServiceAsyncStub

    async def new_key(self) -> keys_pb2.ApiKeySecret:
        created: keys_pb2.ApiKeySecret = await self.admin_a.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name="replica test", user_ids=[DEMO_USER])
        )
        return created


@pytest_asyncio.fixture
async def replicas(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[Replicas]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, api_key_bcrypt_rounds=11)
    assert settings.api_key_cache_s >= 30  # the cache each replica would otherwise trust
    async with running_stack(settings, movers=0, workers=0, cache=False) as stack:
        b = GatewayApp(stack.settings)
        await b.start()
        raw_a, raw_b = stack.unauthenticated_channel(), grpc.aio.insecure_channel(f"127.0.0.1:{b.port}")
        try:
            yield Replicas(
                stack,
                b,
                jobs_pb2_grpc.JobServiceStub(raw_a),
                jobs_pb2_grpc.JobServiceStub(raw_b),
                keys_pb2_grpc.ApiKeyServiceStub(stack.channel),
            )
        finally:
            await raw_a.close()
            await raw_b.close()
            await b.stop(1.0)


def _bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _signed(key_id: str, secret: str) -> list[tuple[str, str]]:
    headers = signing.sign_headers(key_id, secret, "POST", LIST_PATH, body=LIST.SerializeToString())
    return list(headers.items())


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    return err.value


def _cached_for(authn: Authenticator, key_id: str) -> float:
    """Seconds the replica would still trust its cached check of `key_id`."""
    return authn._cache[key_id].expires - time.monotonic()


async def test_a_key_revoked_through_one_gateway_is_refused_by_another_at_its_next_call(
    replicas: Replicas,
) -> None:
    key = await replicas.new_key()
    key_id = key.key.key_id
    for jobs in (replicas.jobs_a, replicas.jobs_b):
        await jobs.ListJobs(LIST, metadata=_bearer(key.api_key))
        await jobs.ListJobs(LIST, metadata=_signed(key_id, key.signing_secret))
    authn_b = replicas.b.authenticator
    assert _cached_for(authn_b, key_id) > 30  # B would honour the key for half a minute more
    checks = authn_b.bcrypt_checks
    await replicas.admin_a.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=key_id))
    revoked_at = time.monotonic()
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_bearer(key.api_key)))
    assert time.monotonic() - revoked_at < 1.0
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_signed(key_id, key.signing_secret)))
    await _refused(replicas.jobs_a.ListJobs(LIST, metadata=_bearer(key.api_key)))
    assert authn_b.bcrypt_checks == checks  # refused by reloading the record, not by a new bcrypt
    assert key_id not in authn_b._cache


async def test_a_rotation_on_one_gateway_ends_the_old_secrets_on_another_and_the_new_ones_work_there(
    replicas: Replicas,
) -> None:
    key = await replicas.new_key()
    key_id = key.key.key_id
    await replicas.jobs_b.ListJobs(LIST, metadata=_bearer(key.api_key))
    await replicas.jobs_b.ListJobs(LIST, metadata=_signed(key_id, key.signing_secret))
    assert _cached_for(replicas.b.authenticator, key_id) > 30
    rotated = await replicas.admin_a.RotateApiKey(keys_pb2.RotateApiKeyRequest(key_id=key_id))
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_bearer(key.api_key)))
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_signed(key_id, key.signing_secret)))
    # The new secrets work on B at once, although B cached the old record.
    await replicas.jobs_b.ListJobs(LIST, metadata=_bearer(rotated.api_key))
    await replicas.jobs_b.ListJobs(LIST, metadata=_signed(key_id, rotated.signing_secret))
    # A second rotation while B holds the new secret as verified: B drops that too.
    await replicas.admin_a.RotateApiKey(keys_pb2.RotateApiKeyRequest(key_id=key_id))
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_bearer(rotated.api_key)))


async def test_the_epoch_is_bumped_by_every_rotation_and_revocation_and_a_lost_one_forces_a_reload(
    replicas: Replicas,
) -> None:
    key = await replicas.new_key()
    key_id = key.key.key_id
    redis = replicas.b.redis
    doc = await replicas.stack.mongo.api_keys.find_one({"key_id": key_id})
    assert doc is not None and doc["secret_hash"].startswith("$2b$11$")  # API_KEY_BCRYPT_ROUNDS
    assert await redis.get(keys.api_key_epoch(key_id)) is None
    rotated = await replicas.admin_a.RotateApiKey(keys_pb2.RotateApiKeyRequest(key_id=key_id))
    assert int(await redis.get(keys.api_key_epoch(key_id)) or 0) == 1
    await replicas.jobs_b.ListJobs(LIST, metadata=_bearer(rotated.api_key))  # B caches epoch 1
    # Revoked behind the gateways' backs and the counter lost (Redis data loss): it now reads 0,
    # which differs from B's cached epoch, so B reloads and finds the key revoked.
    await replicas.stack.mongo.api_keys.update_one({"key_id": key_id}, {"$set": {"revoked": True}})
    await redis.delete(keys.api_key_epoch(key_id))
    # What ApiKeyStore.bump_epoch does after its bump: B's rate-limit lease (granted under epoch 1) ends.
    await asyncio.sleep(apikeys.EPOCH_LEASE_S)
    await _refused(replicas.jobs_b.ListJobs(LIST, metadata=_bearer(rotated.api_key)))
    other = await replicas.new_key()
    await replicas.admin_a.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=other.key.key_id))
    assert int(await redis.get(keys.api_key_epoch(other.key.key_id)) or 0) == 1


async def test_the_cache_of_verified_keys_is_bounded(replicas: Replicas) -> None:
    authn = Authenticator(
        replicas.b.api_keys,
        replicas.b.redis,
        cache_s=60,
        skew_s=300,
        trusted_proxies=(),
        bcrypt_concurrency=replicas.b.settings.api_key_bcrypt_concurrency,
        cache_max=2,
    )
    created = [await replicas.new_key() for _ in range(3)]
    for key in created:
        call = Request(LIST_PATH, {"authorization": f"Bearer {key.api_key}"}, "ipv4:127.0.0.1:1", "")
        await authn.authenticate(call, "127.0.0.1", False)
    assert authn.cached_keys == 2
    assert created[0].key.key_id not in authn._cache  # the least recently used went first
    assert {created[1].key.key_id, created[2].key.key_id} == set(authn._cache)


def test_secrets_over_bcrypts_72_bytes_are_refused_never_truncated() -> None:
    secret = "a" * apikeys.MAX_SECRET_BYTES
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()
    assert apikeys.check_secret(secret, hashed)
    # A truncating bcrypt would accept any longer secret sharing those 72 bytes.
    assert not apikeys.check_secret(secret + "b", hashed)
    assert not apikeys.check_secret("é" * 37, bcrypt.hashpw(("é" * 36).encode(), bcrypt.gensalt(4)).decode())
    with pytest.raises(ValueError, match="72 bytes"):
        apikeys.hash_secret(secret + "b", rounds=10)
    # A presented key whose secret could exceed the limit is not even shaped like ours.
    assert apikeys.parse_key(f"fhk_abcd_{'a' * 73}") is None


def test_the_bcrypt_cost_is_a_setting_with_a_floor() -> None:
    assert Settings.from_env(env={}).api_key_bcrypt_rounds == 12
    assert Settings.from_env(env={"API_KEY_BCRYPT_ROUNDS": "11"}).api_key_bcrypt_rounds == 11
    for bad in ("4", "9", "17"):
        with pytest.raises(SettingsError, match="API_KEY_BCRYPT_ROUNDS"):
            Settings.from_env(env={"API_KEY_BCRYPT_ROUNDS": bad})
    with pytest.raises(SettingsError, match="API_KEY_CACHE_MAX"):
        Settings.from_env(env={"API_KEY_CACHE_MAX": "0"})
    cost = int(apikeys.hash_secret("s" * 43, rounds=10).split("$")[2])
    assert cost == 10
