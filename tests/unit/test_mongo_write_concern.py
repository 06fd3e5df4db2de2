"""MONGO_WRITE_CONCERN: validated at start, and carried by every collection whose writes must be durable."""

from __future__ import annotations

import pytest

from common.mongo import API_KEYS, ARCHIVES, AUTH_REQUESTS, JOBS, TOKENS, Mongo, write_concern
from common.settings import Settings, SettingsError


def test_acknowledged_writes_are_journaled_on_a_majority_by_default() -> None:
    settings = Settings.from_env({})
    assert (settings.mongo_write_concern, settings.mongo_write_timeout_ms) == ("majority", 10000)
    assert write_concern().document == {"w": "majority", "j": True, "wtimeout": 10000}
    assert write_concern("journaled", 0).document == {"w": 1, "j": True}
    assert write_concern("unjournaled", 500).document == {"w": 1, "wtimeout": 500}
    with pytest.raises(ValueError, match="fsync"):
        write_concern("fsync")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MONGO_WRITE_CONCERN": "w1"}, "MONGO_WRITE_CONCERN: expected majority, journaled, unjournaled"),
        ({"MONGO_WRITE_CONCERN": "unjournaled", "FLICKRHUB_ENV": "production"}, "MONGO_WRITE_CONCERN"),
        ({"MONGO_WRITE_TIMEOUT_MS": "-1"}, "MONGO_WRITE_TIMEOUT_MS"),
        ({"MONGO_WRITE_TIMEOUT_MS": "soon"}, "MONGO_WRITE_TIMEOUT_MS"),
    ],
)
def test_a_bad_write_concern_fails_at_start_naming_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


async def test_the_durable_collections_carry_the_configured_write_concern() -> None:
    settings = Settings.from_env({"MONGO_WRITE_CONCERN": "journaled", "MONGO_WRITE_TIMEOUT_MS": "2500"})
    mongo = Mongo.from_settings(settings)  # connects lazily: no server needed
    try:
        durable = {JOBS: mongo.jobs, TOKENS: mongo.tokens, API_KEYS: mongo.api_keys}
        durable |= {AUTH_REQUESTS: mongo.auth_requests, ARCHIVES: mongo.archives}
        for name, collection in durable.items():
            assert collection.write_concern.document == {"w": 1, "j": True, "wtimeout": 2500}, name
            assert mongo.collection(name) is collection  # obtained once
        # Not a promise to anyone: the audit log (and upload blobs) keep the server's default.
        assert mongo.audit_log.write_concern.document == {}
        assert mongo.db.write_concern.document == {}
    finally:
        await mongo.close()
    default = Mongo.connect("mongodb://127.0.0.1:1/?directConnection=true", "x")
    try:
        assert default.jobs.write_concern.document == {"w": "majority", "j": True, "wtimeout": 10000}
    finally:
        await default.close()
