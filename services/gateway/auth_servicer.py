"""AuthService: authorize FlickrHub to act for a Flickr user (OAuth 1.0a), and manage stored tokens.

Start asks Flickr for a request token and remembers it (secret encrypted) in
`auth_requests`; complete (or Flickr's callback redirect) claims that request
exactly once, trades the verifier for an access token and stores it encrypted
in `tokens`. Out-of-band or callback mode is configuration
(FLICKR_OAUTH_CALLBACK_URL). Tokens and secrets never appear in answers or logs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from typing import Any

import aiohttp
import grpc
from google.protobuf import timestamp_pb2

from common.errors import FailedPrecondition, FieldViolation, FlickrHubError, InvalidArgument, NotFound
from common.settings import Settings
from common.tokens import TokenRecord, TokenStore, TokenSummary, token_id_hash
from flickrhub.v1 import auth_pb2, auth_pb2_grpc
from gateway import flickr_oauth, identity
from gateway.auth_requests import AuthRequest, AuthRequestStore
from gateway.validation import USER_ID_RE

log = logging.getLogger(__name__)

# OAuth tokens and verifiers are RFC 3986 unreserved characters (Flickr: digits, hex, dashes).
OAUTH_VALUE_RE = re.compile(r"[A-Za-z0-9._~-]{1,256}")
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100

Context = grpc.aio.ServicerContext[Any, Any]


def _oauth_value(value: str, name: str) -> list[FieldViolation]:
    if OAUTH_VALUE_RE.fullmatch(value):
        return []
    return [FieldViolation(name, "required; 1-256 of A-Z a-z 0-9 . _ ~ -")]


def _user_id(value: str, *, required: bool) -> list[FieldViolation]:
    if (not value and not required) or USER_ID_RE.fullmatch(value):
        return []
    return [FieldViolation("user_id", "1-128 of A-Z a-z 0-9 . _ : @ -" + ("" if required else " (or empty)"))]


def _raise_if(bad: list[FieldViolation], what: str) -> None:
    if bad:
        raise InvalidArgument(f"invalid {what}: " + "; ".join(v.field for v in bad), bad)


def _ts(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def token_info(summary: TokenSummary) -> auth_pb2.TokenInfo:
    """The operator view of a stored token (no token, no secret)."""
    info = auth_pb2.TokenInfo(
        user_id=summary.user_id,
        token_id_hash=summary.token_id_hash,
        user_nsid=summary.user_nsid,
        username=summary.username,
        perms=summary.perms,
        revoked=summary.revoked,
        key_version=summary.key_version,
        created_at=_ts(summary.created_at),
        updated_at=_ts(summary.updated_at),
    )
    return info


def encode_page_token(user_id: str) -> str:
    """Opaque cursor pointing just past `user_id`."""
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The user id a cursor points past; INVALID_ARGUMENT if it is not one we issued."""
    try:
        user_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        user_id = ""
    if not USER_ID_RE.fullmatch(user_id):
        raise InvalidArgument("invalid page_token", [FieldViolation("page_token", "not a token we issued")])
    return user_id


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Runs the OAuth dance with Flickr and keeps the result in the token vault."""

    def __init__(self, settings: Settings, tokens: TokenStore, requests: AuthRequestStore) -> None:
        self._settings = settings
        self._tokens = tokens
        self._requests = requests
        self._session: aiohttp.ClientSession | None = None

    @property
    def mode(self) -> str:
        """ "callback" when FLICKR_OAUTH_CALLBACK_URL is set, else "oob"."""
        return "callback" if self._settings.flickr_oauth_callback_url else "oob"

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the HTTP session to Flickr."""
        if self._session is not None:
            await self._session.close()

    async def StartAuthorization(
        self, request: auth_pb2.StartAuthorizationRequest, context: Context
    ) -> auth_pb2.StartAuthorizationResponse:
        """Get a request token from Flickr; answer the URL where the user approves it."""
        bad = _user_id(request.user_id, required=False)
        if request.perms not in flickr_oauth.PERMS:
            bad.insert(0, FieldViolation("perms", "required; one of read, write, delete"))
        _raise_if(bad, "StartAuthorizationRequest")
        if request.user_id:
            identity.require_user(request.user_id)  # re-authorizing a user is acting for them
        if request.user_id and await self._tokens.summary(request.user_id) is None:
            raise NotFound(f"unknown user_id {request.user_id!r}", reason="USER_NOT_FOUND")
        endpoints = self._settings.flickr_endpoints
        callback = self._settings.flickr_oauth_callback_url or flickr_oauth.OOB
        token, secret = await flickr_oauth.request_token(
            self._http(), endpoints, callback, timeout_s=self._settings.flickr_timeout_s
        )
        expires_at = await self._requests.create(
            token,
            secret,
            perms=request.perms,
            user_id=request.user_id,
            ttl_s=self._settings.auth_request_ttl_s,
            mode=self.mode,
        )
        log.info("authorization started", extra={"perms": request.perms, "mode": self.mode})
        return auth_pb2.StartAuthorizationResponse(
            authorize_url=flickr_oauth.authorize_url(endpoints, token, request.perms),
            request_token=token,
            expires_at=_ts(expires_at),
            mode=self.mode,
        )

    async def CompleteAuthorization(
        self, request: auth_pb2.CompleteAuthorizationRequest, context: Context
    ) -> auth_pb2.Authorization:
        """Trade the verifier for an access token and store it."""
        bad = _oauth_value(request.request_token, "request_token") + _oauth_value(
            request.verifier, "verifier"
        )
        _raise_if(bad, "CompleteAuthorizationRequest")
        return await self._complete(request.request_token, request.verifier)

    async def AuthorizationCallback(
        self, request: auth_pb2.AuthorizationCallbackRequest, context: Context
    ) -> auth_pb2.Authorization:
        """Flickr's redirect (callback mode): the same as CompleteAuthorization."""
        bad = _oauth_value(request.oauth_token, "oauth_token")
        bad += _oauth_value(request.oauth_verifier, "oauth_verifier")
        _raise_if(bad, "AuthorizationCallbackRequest")
        return await self._complete(request.oauth_token, request.oauth_verifier)

    async def _complete(self, request_token: str, verifier: str) -> auth_pb2.Authorization:
        pending = await self._requests.claim(request_token)
        try:
            granted = await flickr_oauth.access_token(
                self._http(),
                self._settings.flickr_endpoints,
                pending.request_token,
                pending.request_secret,
                verifier,
                timeout_s=self._settings.flickr_timeout_s,
            )
        except FlickrHubError:
            # Flickr said no (or was down): the user may retry, e.g. after mistyping the verifier.
            await self._requests.release(pending)
            raise
        user_id = await self._owner(pending, granted)
        await self._tokens.put(
            TokenRecord(
                user_id=user_id,
                token_id_hash=token_id_hash(granted.token),
                oauth_token=granted.token,
                oauth_token_secret=granted.secret,
                user_nsid=granted.user_nsid,
                username=granted.username,
                perms=pending.perms,
            )
        )
        await self._requests.complete(pending, user_id)
        log.info(
            "authorization completed",
            extra={"user_id": user_id, "user_nsid": granted.user_nsid, "perms": pending.perms},
        )
        return auth_pb2.Authorization(
            user_id=user_id,
            user_nsid=granted.user_nsid,
            username=granted.username,
            fullname=granted.fullname,
            perms=pending.perms,
        )

    async def _owner(self, pending: AuthRequest, granted: flickr_oauth.AccessToken) -> str:
        """The user id the new token belongs to: a fresh one, or the re-authorized user's."""
        if not pending.user_id:
            return str(uuid.uuid4())
        existing = await self._tokens.summary(pending.user_id)
        if existing is not None and existing.user_nsid and existing.user_nsid != granted.user_nsid:
            # Flickr consumed the request token: the request is spent, the foreign token is dropped.
            await self._requests.complete(pending, pending.user_id)
            raise FailedPrecondition(
                f"user_id {pending.user_id!r} belongs to another Flickr account; the approval was "
                "given by a different one and nothing was changed",
                "AUTH_USER_MISMATCH",
            )
        return pending.user_id

    async def ListTokens(
        self, request: auth_pb2.ListTokensRequest, context: Context
    ) -> auth_pb2.ListTokensResponse:
        """Stored tokens ordered by user id, without secrets."""
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            _raise_if(
                [FieldViolation("page_size", f"0..{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")],
                "ListTokensRequest",
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token) if request.page_token else ""
        found = await self._tokens.list(size + 1, after)
        page = found[:size]
        next_token = encode_page_token(page[-1].user_id) if len(found) > size else ""
        return auth_pb2.ListTokensResponse(tokens=[token_info(s) for s in page], next_page_token=next_token)

    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest, context: Context) -> auth_pb2.TokenInfo:
        """Revoke a user's token: new jobs are refused and queued ones fail with TOKEN_NOT_FOUND."""
        _raise_if(_user_id(request.user_id, required=True), "RevokeTokenRequest")
        summary = await self._tokens.revoke(request.user_id)
        if summary is None:
            raise NotFound(f"unknown user_id {request.user_id!r}", reason="USER_NOT_FOUND")
        log.info("token revoked", extra={"user_id": request.user_id})
        return token_info(summary)
