"""The client side of Flickr's OAuth 1.0a endpoints: request token, authorize URL, access token.

Requests are signed with `common.oauth1` (HMAC-SHA1, OAuth parameters in the
Authorization header, as flickrapi sends them). Flickr answers form-encoded
bodies; failures come back as HTTP 401 `oauth_problem=…`, which are mapped once,
here, onto FlickrHub's error tree (docs/flickr-api.md §2.1, §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import aiohttp

from common import oauth1
from common.errors import (
    FailedPrecondition,
    FieldViolation,
    FlickrHubError,
    InvalidArgument,
    Unavailable,
)
from common.settings import FlickrEndpoints

PERMS = ("read", "write", "delete")
OOB = "oob"

# oauth_problem values (RFC 5849 problem-reporting names, as Flickr uses them) → what they mean here.
_TOKEN_PROBLEMS = frozenset({"token_rejected", "token_expired", "token_used", "token_revoked"})
_APP_PROBLEMS = frozenset(
    {"signature_invalid", "consumer_key_unknown", "consumer_key_rejected", "signature_method_rejected"}
)


@dataclass(frozen=True)
class AccessToken:
    """What Flickr's access_token endpoint grants (repr hides the token and its secret)."""

    token: str = field(repr=False)
    secret: str = field(repr=False)
    user_nsid: str
    username: str
    fullname: str = ""


def parse_form(body: str) -> dict[str, str]:
    """A form-encoded body as a dict (first value of each name wins, blanks kept)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(body.strip(), keep_blank_values=True):
        out.setdefault(name, value)
    return out


def problem_error(status: int, body: str) -> FlickrHubError:
    """The FlickrHub error for a non-200 answer of an OAuth endpoint."""
    if status == 429 or status >= 500:
        return Unavailable(
            f"Flickr's OAuth endpoint answered HTTP {status}; retry later", 5.0, "FLICKR_UNAVAILABLE"
        )
    form = parse_form(body) if status in (400, 401) else {}
    problem = form.get("oauth_problem", "")
    error = _problem_to_error(problem, form) if problem else None
    if error is None:
        error = FlickrHubError(
            f"Flickr's OAuth endpoint answered HTTP {status} without a known oauth_problem",
            "FLICKR_OAUTH_ERROR",
        )
    error.metadata.update({"http_status": str(status), "oauth_problem": problem})
    return error


def _problem_to_error(problem: str, form: dict[str, str]) -> FlickrHubError | None:
    if problem == "verifier_invalid":
        return InvalidArgument(
            "Flickr rejected the verifier: check it was copied exactly (or start the authorization again)",
            [FieldViolation("verifier", "not the verifier Flickr issued for this request token")],
        )
    if problem in _TOKEN_PROBLEMS:
        return FailedPrecondition(
            f"Flickr rejected the request token ({problem}): it expired or was already used; "
            "start the authorization again",
            "FLICKR_TOKEN_REJECTED",
        )
    if problem == "permission_denied":
        return FailedPrecondition(
            "the user denied the authorization on Flickr", "FLICKR_AUTHORIZATION_DENIED"
        )
    if problem in _APP_PROBLEMS:
        # The app's key or secret is wrong (or FlickrHub signs wrongly): an operator must act.
        return FailedPrecondition(
            f"Flickr refused FlickrHub's app credentials ({problem}): check FLICKR_API_KEY and "
            "FLICKR_API_SECRET",
            "FLICKR_APP_REJECTED",
        )
    if problem == "timestamp_refused":
        return FailedPrecondition(
            "Flickr refused the request's timestamp: check this host's clock", "FLICKR_TIMESTAMP_REFUSED"
        )
    if problem == "nonce_used":
        return Unavailable("Flickr saw this nonce before; retry", 1.0, "FLICKR_NONCE_USED")
    if problem == "parameter_absent":
        absent = form.get("oauth_parameters_absent", "")
        return FlickrHubError(
            f"Flickr says OAuth parameters are missing: {absent}", "FLICKR_PARAMETER_ABSENT"
        )
    return None


async def _post(session: aiohttp.ClientSession, url: str, header: str, timeout_s: float) -> dict[str, str]:
    """POST a signed, body-less request; the answer's form fields, or the mapped error."""
    try:
        async with session.post(
            url,
            headers={"Authorization": header},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            body = await resp.text(errors="replace")
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(
            f"Flickr's OAuth endpoint is unreachable ({type(exc).__name__}); retry later",
            5.0,
            "FLICKR_UNAVAILABLE",
        ) from None
    if status != 200:
        raise problem_error(status, body)
    return parse_form(body)


def _missing(form: dict[str, str], names: tuple[str, ...], endpoint: str) -> None:
    absent = [n for n in names if not form.get(n)]
    if absent:
        raise Unavailable(
            f"Flickr's {endpoint} answer lacks {', '.join(absent)}", 5.0, reason="FLICKR_BAD_ANSWER"
        )


async def request_token(
    session: aiohttp.ClientSession, endpoints: FlickrEndpoints, callback: str, *, timeout_s: float = 30.0
) -> tuple[str, str]:
    """A fresh request token and its secret; `callback` is "oob" or the URL Flickr redirects to."""
    creds = oauth1.Credentials(endpoints.consumer_key, endpoints.consumer_secret)
    url = endpoints.request_token
    header = oauth1.authorization_header("POST", url, {}, creds, callback=callback)
    form = await _post(session, url, header, timeout_s)
    _missing(form, ("oauth_token", "oauth_token_secret"), "request_token")
    if form.get("oauth_callback_confirmed") != "true":
        # OAuth 1.0a: without the confirmation the provider ignored our callback (an OAuth 1.0 server).
        raise Unavailable("Flickr did not confirm the OAuth callback", 5.0, reason="FLICKR_BAD_ANSWER")
    return form["oauth_token"], form["oauth_token_secret"]


def authorize_url(endpoints: FlickrEndpoints, token: str, perms: str) -> str:
    """Where the user's browser approves `token` for `perms` (the URL is not signed)."""
    if perms not in PERMS:
        raise ValueError(f"perms must be one of {', '.join(PERMS)}, not {perms!r}")
    return f"{endpoints.authorize}?{urlencode({'oauth_token': token, 'perms': perms})}"


async def access_token(
    session: aiohttp.ClientSession,
    endpoints: FlickrEndpoints,
    request_token: str,
    request_secret: str,
    verifier: str,
    *,
    timeout_s: float = 30.0,
) -> AccessToken:
    """Exchange an approved request token and its verifier for the user's access token."""
    creds = oauth1.Credentials(
        endpoints.consumer_key, endpoints.consumer_secret, request_token, request_secret
    )
    url = endpoints.access_token
    header = oauth1.authorization_header("POST", url, {}, creds, verifier=verifier)
    form = await _post(session, url, header, timeout_s)
    _missing(form, ("oauth_token", "oauth_token_secret", "user_nsid", "username"), "access_token")
    return AccessToken(
        token=form["oauth_token"],
        secret=form["oauth_token_secret"],
        user_nsid=form["user_nsid"],
        username=form["username"],
        fullname=form.get("fullname", ""),
    )
