"""Pure pieces of libs/common: entries, backoff, Flickr failures, signatures, settings, vault, logs."""

from __future__ import annotations

import base64
import json
import logging
import random
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from common import flickr_errors, jobs, keys
from common.errors import FieldViolation, InvalidArgument, Unavailable
from common.logs import redact
from common.settings import Settings, SettingsError, markdown_table
from common.vault import LocalKeyProvider, Vault
from flickrhub.v1 import jobs_pb2
from worker import backoff
from worker import webhook_signature as webhook


def test_job_entry_round_trips_through_stream_fields() -> None:
    entry = jobs.JobEntry(
        job_id="j" * 32,
        token="t" * 32,
        user_id="u",
        method="flickr.test.echo",
        target="rest",
        params={"ü": "ä", "a": "b"},
        max_attempts=5,
        attempt=2,
        cache_bypass=True,
        has_callback=True,
        enqueued_ms=123,
        trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    fields = entry.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert jobs.JobEntry.from_fields(fields) == entry
    assert (entry.next_attempt(7).attempt, entry.next_attempt(7).rev) == (3, 7)
    assert entry.with_trace({}).trace == {}


@pytest.mark.parametrize(
    "fields",
    [{}, {"job_id": "x"}, {**jobs.JobEntry("a", "b", "c", "d", "rest", {}, 1).to_fields(), "params": "{"}],
)
def test_malformed_entries_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        jobs.JobEntry.from_fields(fields)


def test_states_targets_and_priorities_map_both_ways() -> None:
    for state in jobs.FINAL_STATES | jobs.LIVE_STATES:
        assert jobs.state_from_proto(jobs.state_to_proto(state)) == state
    assert jobs.state_from_proto(jobs_pb2.JOB_STATE_UNSPECIFIED) is None
    assert jobs.target_from_proto(jobs_pb2.TARGET_UNSPECIFIED) == "rest"
    assert jobs.target_from_proto(jobs.target_to_proto("upload")) == "upload"
    assert jobs.priority_from_proto(jobs_pb2.PRIORITY_UNSPECIFIED) == "normal"
    assert jobs.priority_from_proto(jobs.priority_to_proto("high")) == "high"


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        d = backoff.delay(attempt, 0.5, 30.0, rng)
        assert ceiling / 2 <= d <= ceiling


def test_flickr_failures_are_classified_once() -> None:
    assert flickr_errors.from_envelope(105, "Service currently unavailable").retryable
    assert flickr_errors.from_envelope(106, "Write operation failed").retryable
    perm = flickr_errors.from_envelope(1, "Photo not found")
    assert not perm.retryable and perm.flickr_code == 1 and perm.code == "FLICKR_ERROR"
    assert flickr_errors.from_http(429, "").breaker == "key"
    assert flickr_errors.from_http(503, "").retryable
    assert not flickr_errors.from_http(401, "oauth_problem=signature_invalid").retryable
    assert flickr_errors.from_http(401, "oauth_problem=timestamp_refused").retryable
    assert not flickr_errors.from_http(404, "").retryable
    assert flickr_errors.from_transport(TimeoutError()).retryable
    assert "timed out" in flickr_errors.from_transport(TimeoutError()).message
    assert flickr_errors.bad_payload("x").retryable


def test_webhook_signature_verifies_only_the_exact_body_and_secret() -> None:
    body = json.dumps({"job_id": "1"}).encode()
    header = webhook.sign(body, "s3cret")
    assert header.startswith("sha256=")
    assert webhook.verify(body, "s3cret", header)
    assert not webhook.verify(body + b" ", "s3cret", header)
    assert not webhook.verify(body, "other", header)


def test_settings_parse_types_and_name_the_bad_variable() -> None:
    s = Settings.from_env(
        {"WORKER_CONCURRENCY": "8", "WORKER_BACKOFF_BASE_S": "0.5", "FLICKRHUB_ENV": "demo"}
    )
    assert s.worker_concurrency == 8 and s.worker_backoff_base_s == 0.5
    with pytest.raises(SettingsError, match="WORKER_CONCURRENCY"):
        Settings.from_env({"WORKER_CONCURRENCY": "many"})
    with pytest.raises(SettingsError, match="WORKER_MAX_ATTEMPTS"):
        Settings.from_env({"WORKER_MAX_ATTEMPTS": "0"})
    with pytest.raises(SettingsError, match="FLICKR_API_SECRET"):
        Settings.from_env({"FLICKR_API_KEY": "k"})
    production = Settings.from_env({"FLICKRHUB_ENV": "production"})  # services without secrets start
    with pytest.raises(SettingsError, match="VAULT_MASTER_KEY"):
        LocalKeyProvider.from_settings(production)  # those that hold secrets refuse
    with pytest.raises(SettingsError, match="FLICKRHUB_ENV"):
        Settings.from_env({"FLICKRHUB_ENV": "staging"})
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="EVENT_LOOP"):
        Settings.from_env({"EVENT_LOOP": "trio"})
    assert Settings.from_env({"LOG_LEVEL": "DEBUG"}).log_level == "DEBUG"
    assert Settings.env_name("redis_url") == "REDIS_URL"


def test_sandbox_is_used_until_flickr_credentials_are_set() -> None:
    sandbox = Settings.from_env({"SANDBOX_URL": "http://127.0.0.1:1234/"}).flickr_endpoints
    assert sandbox.rest == "http://127.0.0.1:1234/services/rest/"
    real = Settings.from_env({"FLICKR_API_KEY": "k", "FLICKR_API_SECRET": "s"})
    assert not real.uses_sandbox
    assert real.flickr_endpoints.rest == "https://api.flickr.com/services/rest/"
    assert "consumer_secret" not in repr(real.flickr_endpoints)


def test_readme_configuration_table_is_generated_from_settings() -> None:
    table = markdown_table()
    assert "| `REDIS_URL` |" in table and "| `VAULT_MASTER_KEY` | (empty) |" in table
    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert table in readme.read_text(encoding="utf-8"), (
        "stale README table: python -m common.settings --markdown"
    )


def test_vault_round_trips_and_binds_purpose_and_record() -> None:
    vault = Vault(LocalKeyProvider({1: b"k" * 32}))
    blob = vault.encrypt("oauth-secret", purpose="oauth-token", record_id="user-1")
    assert "oauth-secret" not in json.dumps(blob)
    assert vault.decrypt(blob, purpose="oauth-token", record_id="user-1") == "oauth-secret"
    with pytest.raises(InvalidTag):
        vault.decrypt(blob, purpose="oauth-token", record_id="user-2")
    with pytest.raises(InvalidTag):
        vault.decrypt(blob, purpose="callback-secret", record_id="user-1")


def test_vault_reads_old_key_versions_after_rotation() -> None:
    old = Vault(LocalKeyProvider({1: b"a" * 32}, current_version=1))
    blob = old.encrypt("s", purpose="p", record_id="r")
    rotated = Vault(LocalKeyProvider({1: b"a" * 32, 2: b"b" * 32}, current_version=2))
    assert rotated.decrypt(blob, purpose="p", record_id="r") == "s"
    assert rotated.encrypt("s", purpose="p", record_id="r")["v"] == 2


def test_master_key_comes_from_settings_and_is_checked() -> None:
    key = base64.b64encode(b"x" * 32).decode()
    assert (
        LocalKeyProvider.from_settings(Settings.from_env({"VAULT_MASTER_KEY": key})).master_key(1)
        == b"x" * 32
    )
    with pytest.raises(SettingsError, match="32 bytes"):
        LocalKeyProvider.from_settings(
            Settings.from_env({"VAULT_MASTER_KEY": base64.b64encode(b"short").decode()})
        )
    with pytest.raises(SettingsError, match="base64"):
        LocalKeyProvider.from_settings(Settings.from_env({"VAULT_MASTER_KEY": "!!!"}))


def test_master_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(b"f" * 32).decode() + "\n")
    provider = LocalKeyProvider.from_settings(Settings.from_env({"VAULT_KEY_FILE": str(path)}))
    assert provider.master_key(1) == b"f" * 32


def test_secrets_are_redacted_from_log_text() -> None:
    line = redact("calling with oauth_token_secret=abc123&callback_secret: 'xyz' and Authorization=Bearer")
    assert "abc123" not in line and "xyz" not in line
    assert "[REDACTED]" in line


def test_log_records_are_json_with_service_and_job(capsys: pytest.CaptureFixture[str]) -> None:
    from common.logs import job_id_var, setup_logging

    setup_logging("unit", "INFO")
    token = job_id_var.set("job-123")
    try:
        logging.getLogger("unit").info("hello secret=hunter2")
    finally:
        job_id_var.reset(token)
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["service"] == "unit" and record["job_id"] == "job-123"
    assert "hunter2" not in record["message"]


def test_errors_carry_rich_details() -> None:
    status = InvalidArgument("bad", [FieldViolation("user_id", "required")]).to_status()
    assert status.code == 3 and len(status.details) == 2
    retry = Unavailable("down", retry_after_s=2.5).to_status()
    assert retry.code == 14 and len(retry.details) == 2


def test_keys_carry_the_token_hash_tag() -> None:
    assert keys.token_stream("abc") == "fh:q:{abc}"
    assert keys.idempotency("abc", "d").startswith("fh:idem:{abc}")
    assert all("{work}" in keys.work_stream(t) for t in keys.TARGETS)
    with pytest.raises(ValueError, match="unknown target"):
        keys.work_stream("fax")


def test_retention_periods_and_archive_age_are_settings_checked_together() -> None:
    from datetime import UTC, datetime, timedelta

    from common import jobs
    from common.jobstore import Retention

    settings = Settings.from_env({"JOB_RETENTION_DAYS": "60", "JOB_EXPIRED_RETENTION_DAYS": "10"})
    retention = Retention.from_settings(settings)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert retention.expire_at(jobs.COMPLETED, at) == at + timedelta(days=60)
    assert retention.expire_at(jobs.FAILED, at) == at + timedelta(days=60)
    assert retention.expire_at(jobs.EXPIRED, at) == at + timedelta(days=10)
    assert Retention().expire_at(jobs.COMPLETED, at) == at + timedelta(days=90)  # the defaults
    assert Retention().expire_at(jobs.EXPIRED, at) == at + timedelta(days=30)
    # A day is archived up to a day after the age: the age must leave that day before any TTL.
    with pytest.raises(SettingsError, match="ARCHIVE_AFTER_DAYS"):
        Settings.from_env({"JOB_EXPIRED_RETENTION_DAYS": "8", "ARCHIVE_AFTER_DAYS": "7"})
    with pytest.raises(SettingsError, match="JOB_RETENTION_DAYS"):
        Settings.from_env({"JOB_RETENTION_DAYS": "0"})
