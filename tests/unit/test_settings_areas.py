"""The settings package: one frozen Settings built from its area modules, each value checked at start."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from common.settings import UPLOAD_JOB_PART_BYTES, Settings, SettingsError, markdown_table


def test_every_field_comes_from_exactly_one_area_with_its_own_variable() -> None:
    areas = Settings.__bases__
    by_area = [f.name for area in areas for f in dataclasses.fields(area)]
    assert len(by_area) == len(set(by_area)), "a field declared in two areas: one would hide the other"
    assert sorted(by_area) == sorted(f.name for f in dataclasses.fields(Settings))
    variables = [f.metadata["env"] for f in dataclasses.fields(Settings)]
    assert len(variables) == len(set(variables))
    assert all(f.metadata["doc"] for f in dataclasses.fields(Settings))


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.watch_poll_s = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("IDEMPOTENCY_TTL_S", "3600", "idempotency_ttl_s", 3600),
        ("WATCH_POLL_S", "0.5", "watch_poll_s", 0.5),
        ("API_KEY_BCRYPT_CONCURRENCY", "2", "api_key_bcrypt_concurrency", 2),
        ("AUDIT_RETENTION_DAYS", "30", "audit_retention_s", 30 * 86400),
        ("DEAD_LETTERS_MAX", "500", "dead_letters_max", 500),
        ("CACHE_REDIS_MAX_IN_FLIGHT", "8", "cache_redis_max_in_flight", 8),
        ("CACHE_HOT_KEEP_FACTOR", "10", "cache_hot_keep_factor", 10),
        ("UPLOAD_MAX_PHOTO_BYTES", "1048576", "upload_max_photo_bytes", 1048576),
        ("EDGE_MAX_BODY_BYTES", "65536", "edge_max_body_bytes", 65536),
    ],
)
def test_an_operator_setting_is_read_from_its_variable(
    variable: str, value: str, field: str, expected: float
) -> None:
    default = getattr(Settings.from_env({}), field)
    assert default != expected
    assert getattr(Settings.from_env({variable: value}), field) == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IDEMPOTENCY_TTL_S", "0"),
        ("WATCH_POLL_S", "0"),
        ("API_KEY_BCRYPT_CONCURRENCY", "0"),
        ("API_KEY_DEFAULT_RATE_PER_MIN", "0"),
        ("AUDIT_RETENTION_DAYS", "0"),
        ("AUDIT_RETENTION_DAYS", "30000"),  # beyond what a MongoDB TTL index holds
        ("DEAD_LETTERS_MAX", "0"),
        ("CACHE_REDIS_MAX_IN_FLIGHT", "0"),
        ("CACHE_HOT_KEEP_FACTOR", "0"),
        ("UPLOAD_MAX_PHOTO_BYTES", "0"),
        ("EDGE_MAX_BODY_BYTES", "0"),
        ("EDGE_MAX_BODY_BYTES", str(16 * 1024 * 1024 + 1)),  # the gateway would refuse the message
        ("CACHE_BATCH_WINDOW_MS", "101"),
        ("GATEWAY_USER_TURNS", "-1"),
        ("FLICKR_BUDGET_BURST", "0"),
        ("WATCH_POLL_S", "soon"),
    ],
)
def test_a_bad_value_fails_at_start_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        Settings.from_env({variable: value})


def test_the_retired_upload_body_variable_fails_at_start_naming_its_replacement() -> None:
    with pytest.raises(SettingsError, match="EDGE_UPLOAD_MAX_BYTES: replaced by UPLOAD_MAX_PHOTO_BYTES"):
        Settings.from_env({"EDGE_UPLOAD_MAX_BYTES": "105906176"})


def test_the_edge_allows_an_upload_body_of_the_photo_limit_and_the_job_part() -> None:
    default = Settings.from_env({})
    assert default.edge_upload_max_bytes == 101 * 1024 * 1024  # as EDGE_UPLOAD_MAX_BYTES was
    small = Settings.from_env({"UPLOAD_MAX_PHOTO_BYTES": "1000"})
    assert small.edge_upload_max_bytes == 1000 + UPLOAD_JOB_PART_BYTES


def test_an_override_that_is_no_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="edge_upload_max_bytes"):
        Settings.from_env({}, edge_upload_max_bytes=1)  # derived, not settable


def test_python_m_common_settings_prints_the_markdown_table() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "common.settings", "--markdown"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == markdown_table()
    assert "| `IDEMPOTENCY_TTL_S` | `86400` |" in printed
