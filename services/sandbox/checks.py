"""Flickr's checks on a call, shared by the REST and upload endpoints.

Order (Flickr's real one is unverified): method 112 (REST only) → API
key 100 → OAuth (97 missing signature, 401 parameter_absent, 98 unknown/revoked
token, 96 bad signature, 401 timestamp_refused, 401 nonce_used) → signed-only
methods 97 → permission 99. A bad signature is answered in the envelope (code 96,
HTTP 200), like every REST error; only what the envelope has no code for (nonce,
timestamp, absent parameters) is an `OAuthProblem`, an HTTP 401.
"""

from __future__ import annotations

import logging
from typing import Final

from common.flickr_methods import NONE, WRITE, perm_allows, required_perm
from common.oauth1 import base_string, verify
from sandbox.methods import METHODS, SIGNED_ONLY, FlickrFault
from sandbox.params import RestRequest
from sandbox.state import TIMESTAMP_WINDOW_S, App, SandboxState, Token

log = logging.getLogger("sandbox")

_REQUIRED_OAUTH: Final = ("oauth_consumer_key", "oauth_nonce", "oauth_timestamp", "oauth_signature_method")


class OAuthProblem(Exception):
    """An OAuth protocol failure answered as HTTP 401 `oauth_problem=…`."""

    def __init__(self, problem: str, **details: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.details = details


def authorize(state: SandboxState, req: RestRequest) -> Token | None:
    """Run Flickr's key, OAuth and permission checks for a REST call; the caller's token, if any."""
    if req.method not in METHODS:
        raise FlickrFault(112, f'Method "{req.method}" not found')
    app = _consumer(state, req)
    token = check_oauth(state, req, app) if req.uses_oauth else None
    if not req.uses_oauth and req.method in SIGNED_ONLY:
        raise FlickrFault(97, "Missing signature")
    required = required_perm(req.method)
    if required != NONE:
        _require_perm(token, required)
    return token


def authorize_write(state: SandboxState, req: RestRequest) -> Token:
    """Key 100, the OAuth checks of the REST endpoint, then write permission (99)."""
    app = _consumer(state, req)
    token = check_oauth(state, req, app) if req.uses_oauth else None
    return _require_perm(token, WRITE)


def check_oauth(state: SandboxState, req: RestRequest, app: App) -> Token | None:
    """Verify the OAuth signature, token, timestamp and nonce; the token, if one was sent."""
    params = req.params
    if req.header_malformed:
        raise FlickrFault(96, "Invalid signature")
    if "oauth_signature" not in params:
        raise FlickrFault(97, "Missing signature")
    absent = [name for name in _REQUIRED_OAUTH if name not in params]
    if absent:
        raise OAuthProblem("parameter_absent", oauth_parameters_absent="&".join(absent))
    token = None
    if "oauth_token" in params:
        token = state.tokens.get(params["oauth_token"])
        if token is None or token.consumer_key not in (None, app.consumer_key):
            raise FlickrFault(98, "Invalid auth token")
    secret = token.token_secret if token else ""
    if not verify(req.http_method, req.url, req.pairs, app.consumer_secret, secret):
        # The base string holds no secret; it is what a client developer needs to compare.
        log.info("invalid signature; base string: %s", base_string(req.http_method, req.url, req.pairs))
        raise FlickrFault(96, "Invalid signature")
    timestamp, now = params["oauth_timestamp"], int(state.clock())
    if not timestamp.isdigit() or abs(int(timestamp) - now) > TIMESTAMP_WINDOW_S:
        window = f"{now - TIMESTAMP_WINDOW_S}-{now + TIMESTAMP_WINDOW_S}"
        raise OAuthProblem("timestamp_refused", oauth_acceptable_timestamps=window)
    if not state.use_nonce(app.consumer_key, params.get("oauth_token", ""), params["oauth_nonce"], timestamp):
        raise OAuthProblem("nonce_used")
    return token


def _consumer(state: SandboxState, req: RestRequest) -> App:
    """The registered app of the call's API key (100 when missing or unknown)."""
    if req.consumer_key is None:
        raise FlickrFault(100, "Invalid API Key (Key has invalid format)")
    app = state.apps.get(req.consumer_key)
    if app is None:
        raise FlickrFault(100, "Invalid API Key (Key not found)")
    return app


def _require_perm(token: Token | None, required: str) -> Token:
    """The token when it grants `required` (99 otherwise, or without a token)."""
    if token is None:
        raise FlickrFault(99, "User not logged in / Insufficient permissions")
    if not perm_allows(token.perms, required):
        raise FlickrFault(
            99, f"Insufficient permissions. Method requires {required} privileges; {token.perms} granted."
        )
    return token
