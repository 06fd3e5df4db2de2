"""Parsing Flickr's OAuth answers and mapping its oauth_problem bodies onto FlickrHub errors."""

from __future__ import annotations

import grpc
import pytest

from common.errors import FlickrHubError
from common.settings import FLICKR_OAUTH_BASE, Settings, SettingsError
from gateway import flickr_oauth


def test_parse_form_reads_flickrs_access_token_answer() -> None:
    body = (
        "fullname=Jamal%20Fanaian&oauth_token=72157626318069415-087bfc7b5816092c"
        "&oauth_token_secret=a202d1f853ec69de&user_nsid=21207597%40N07&username=jamalfanaian\n"
    )
    form = flickr_oauth.parse_form(body)
    assert form == {
        "fullname": "Jamal Fanaian",
        "oauth_token": "72157626318069415-087bfc7b5816092c",
        "oauth_token_secret": "a202d1f853ec69de",
        "user_nsid": "21207597@N07",
        "username": "jamalfanaian",
    }


def test_parse_form_keeps_blank_values_and_first_of_repeats() -> None:
    assert flickr_oauth.parse_form("fullname=&a=1&a=2") == {"fullname": "", "a": "1"}


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        ("oauth_problem=verifier_invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("oauth_problem=token_rejected", grpc.StatusCode.FAILED_PRECONDITION, "FLICKR_TOKEN_REJECTED"),
        ("oauth_problem=token_expired", grpc.StatusCode.FAILED_PRECONDITION, "FLICKR_TOKEN_REJECTED"),
        (
            "oauth_problem=permission_denied",
            grpc.StatusCode.FAILED_PRECONDITION,
            "FLICKR_AUTHORIZATION_DENIED",
        ),
        (
            "oauth_problem=signature_invalid&debug_sbs=POST%26x",
            grpc.StatusCode.FAILED_PRECONDITION,
            "FLICKR_APP_REJECTED",
        ),
        ("oauth_problem=consumer_key_unknown", grpc.StatusCode.FAILED_PRECONDITION, "FLICKR_APP_REJECTED"),
        ("oauth_problem=timestamp_refused", grpc.StatusCode.FAILED_PRECONDITION, "FLICKR_TIMESTAMP_REFUSED"),
        ("oauth_problem=nonce_used", grpc.StatusCode.UNAVAILABLE, "FLICKR_NONCE_USED"),
        (
            "oauth_problem=parameter_absent&oauth_parameters_absent=oauth_callback",
            grpc.StatusCode.INTERNAL,
            "FLICKR_PARAMETER_ABSENT",
        ),
        ("oauth_problem=something_new", grpc.StatusCode.INTERNAL, "FLICKR_OAUTH_ERROR"),
        ("<html>no</html>", grpc.StatusCode.INTERNAL, "FLICKR_OAUTH_ERROR"),
    ],
)
def test_oauth_problems_map_to_clear_errors(body: str, code: grpc.StatusCode, reason: str) -> None:
    error = flickr_oauth.problem_error(401, body)
    assert isinstance(error, FlickrHubError)
    assert error.code == code
    assert error.reason == reason
    assert error.metadata["http_status"] == "401"


def test_wrong_verifier_names_the_verifier_field() -> None:
    error = flickr_oauth.problem_error(401, "oauth_problem=verifier_invalid")
    assert [v.field for v in error.violations] == ["verifier"]


def test_parameter_absent_names_the_missing_parameters() -> None:
    error = flickr_oauth.problem_error(
        401, "oauth_problem=parameter_absent&oauth_parameters_absent=oauth_callback"
    )
    assert "oauth_callback" in error.message


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_flickr_down_is_unavailable_and_retryable(status: int) -> None:
    error = flickr_oauth.problem_error(status, "<html>Service Unavailable</html>")
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.retryable
    assert error.reason == "FLICKR_UNAVAILABLE"


def test_authorize_url_carries_token_and_perms() -> None:
    endpoints = Settings.from_env({}).flickr_endpoints
    url = flickr_oauth.authorize_url(endpoints, "72157-abc", "write")
    assert url == f"{endpoints.authorize}?oauth_token=72157-abc&perms=write"
    with pytest.raises(ValueError, match="perms"):
        flickr_oauth.authorize_url(endpoints, "72157-abc", "admin")


def test_endpoints_are_flickrs_with_credentials_and_the_sandboxs_without() -> None:
    real = Settings.from_env({"FLICKR_API_KEY": "k", "FLICKR_API_SECRET": "s"}).flickr_endpoints
    assert real.request_token == "https://www.flickr.com/services/oauth/request_token"
    assert real.authorize == f"{FLICKR_OAUTH_BASE}/authorize"
    assert real.access_token == f"{FLICKR_OAUTH_BASE}/access_token"
    sandbox = Settings.from_env({"SANDBOX_URL": "http://127.0.0.1:9999/"}).flickr_endpoints
    assert sandbox.request_token == "http://127.0.0.1:9999/services/oauth/request_token"
    assert sandbox.authorize == "http://127.0.0.1:9999/services/oauth/authorize"


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"FLICKR_OAUTH_CALLBACK_URL": ""}, True),
        ({"FLICKR_OAUTH_CALLBACK_URL": "https://hub.example.com/v1/auth/callback"}, True),
        ({"FLICKR_OAUTH_CALLBACK_URL": "http://127.0.0.1:8080/v1/auth/callback"}, True),
        ({"FLICKR_OAUTH_CALLBACK_URL": "http://hub.example.com/v1/auth/callback"}, False),
        ({"FLICKR_OAUTH_CALLBACK_URL": "ftp://x/y"}, False),
        (
            {
                "FLICKR_OAUTH_CALLBACK_URL": "http://127.0.0.1:8080/v1/auth/callback",
                "FLICKRHUB_ENV": "production",
            },
            False,
        ),
        ({"AUTH_REQUEST_TTL_S": "0"}, False),
    ],
)
def test_oauth_settings_are_validated_at_start(env: dict[str, str], ok: bool) -> None:
    if ok:
        Settings.from_env(env)
        return
    with pytest.raises(
        SettingsError, match=next(iter(env)) if len(env) == 1 else "FLICKR_OAUTH_CALLBACK_URL"
    ):
        Settings.from_env(env)
