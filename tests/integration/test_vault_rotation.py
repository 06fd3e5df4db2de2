"""Secrets at rest: envelope encryption, key versions, and rotation while jobs keep running."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from cli.rotation import rotate
from common import auditlog
from common.settings import Settings, SettingsError
from common.vault import LocalKeyProvider, Vault, parse_keys
from flickrhub.v1 import jobs_pb2
from gateway.auth_requests import AuthRequestStore
from sandbox.state import DEMO_TOKEN, DEMO_TOKEN_SECRET
from tests.e2e.webhook_receiver import Receiver
from tests.helpers.inproc import DEMO_USER, running_stack, seed_demo_token, stack_settings

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


def test_key_lists_parse_with_versions_and_refuse_nonsense() -> None:
    assert parse_keys(K1) == {1: b"1" * 32}
    assert parse_keys(f"1:{K1},2:{K2}") == {1: b"1" * 32, 2: b"2" * 32}
    assert parse_keys(f"1:{K1}\n2:{K2}\n") == {1: b"1" * 32, 2: b"2" * 32}
    for bad in (f"1:{K1},1:{K2}", "x:" + K1, "0:" + K1, "   ", "2:" + base64.b64encode(b"short").decode()):
        with pytest.raises(SettingsError):
            parse_keys(bad)
    provider = LocalKeyProvider.from_settings(Settings.from_env({"VAULT_MASTER_KEY": f"1:{K1},2:{K2}"}))
    assert provider.current_version == 2
    assert provider.versions == [1, 2]
    pinned = Settings.from_env({"VAULT_MASTER_KEY": f"1:{K1},2:{K2}", "VAULT_KEY_VERSION": "1"})
    assert LocalKeyProvider.from_settings(pinned).current_version == 1
    with pytest.raises(SettingsError, match="VAULT_KEY_VERSION"):
        LocalKeyProvider.from_settings(Settings.from_env({"VAULT_MASTER_KEY": K1, "VAULT_KEY_VERSION": "3"}))


async def test_rotation_while_jobs_run_fails_no_job_and_leaves_nothing_on_the_old_key(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> None:
    old = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name, vault_master_key=K1)
    await seed_demo_token(old)  # stored under key version 1
    both = stack_settings(
        redis_url, cache_redis_url, mongo_url, mongo_db_name, vault_master_key=f"1:{K1},2:{K2}"
    )
    receiver = await Receiver().start()
    try:
        async with running_stack(old, movers=0, workers=0) as before:
            # Accepted while only the old key existed: their webhook secrets are on version 1.
            job_ids = [await _submit(before, receiver.url, i) for i in range(20)]
            pending = AuthRequestStore(before.mongo.auth_requests, Vault(LocalKeyProvider.from_settings(old)))
            await pending.create(
                "72157600000000099-0123456789abcdef",
                "req-secret-0001",
                perms="read",
                user_id="",
                ttl_s=900,
                mode="oob",
            )
            assert await before.mongo.jobs.count_documents({"callback_secret.v": 1}) == 20
        async with running_stack(both, workers=2) as stack:

            async def keep_submitting() -> None:
                for i in range(20, 80):
                    job_ids.append(await _submit(stack, receiver.url, i))

            submitting = asyncio.create_task(keep_submitting())
            report = await rotate(stack.mongo, Vault(LocalKeyProvider.from_settings(both)), batch=7)
            await submitting
            states = await asyncio.gather(*(_final_state(stack, j) for j in job_ids))
            for job_id in job_ids:
                await receiver.wait_for(job_id)
            tokens = [doc async for doc in stack.mongo.tokens.find({})]
            secrets = [doc async for doc in stack.mongo.jobs.find({"callback_secret": {"$exists": True}})]
            rotations = await auditlog.entries(stack.mongo.audit_log, {"action": "vault.rotate"})
            audit = rotations[0] if rotations else None
            request = await stack.mongo.auth_requests.find_one({})
    finally:
        await receiver.stop()
    assert set(states) == {jobs_pb2.JOB_STATE_COMPLETED}
    assert report.rotated["tokens"] == 1
    assert report.left_on_old_keys == {"tokens": 0, "jobs": 0, "auth_requests": 0, "api_keys": 0}
    only_new = Vault(LocalKeyProvider({2: b"2" * 32}, current_version=2))  # the old key is gone
    for doc in tokens:
        assert (
            only_new.decrypt(doc["oauth_token"], purpose="oauth-token", record_id=doc["user_id"])
            == DEMO_TOKEN
        )
        assert only_new.decrypt(
            doc["oauth_token_secret"], purpose="oauth-token", record_id=doc["user_id"]
        ) == (DEMO_TOKEN_SECRET)
    assert all(doc["callback_secret"]["v"] == 2 for doc in secrets)
    assert request is not None
    assert only_new.decrypt(
        request["secret"], purpose="request-token-secret", record_id=request["request_id_hash"]
    ) == ("req-secret-0001")
    assert audit is not None
    assert audit["key_version"] == 2
    assert audit["outcome"] == "ok"


async def _submit(stack: Any, url: str, i: int) -> str:
    resp = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            user_id=DEMO_USER,
            method="flickr.test.echo",
            params={"i": str(i)},
            callback_url=url,
            callback_secret=f"callback-secret-number-{i:04d}",
        )
    )
    return str(resp.job_id)


async def _final_state(stack: Any, job_id: str) -> int:
    for _ in range(600):
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in (jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED):
            return int(job.state)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never finished")


def test_cli_rotates_and_reports(mongo_url: str, mongo_db_name: str) -> None:
    import json
    import subprocess
    import sys

    env = {
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db_name,
        "VAULT_MASTER_KEY": f"1:{K1},2:{K2}",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "vault", "rotate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["key_version"] == 2
    assert report["left_on_old_keys"] == {"tokens": 0, "jobs": 0, "auth_requests": 0, "api_keys": 0}
