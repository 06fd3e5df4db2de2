"""ApiKeyService: create, list, rotate and revoke the API keys clients authenticate with (admin only).

Secrets appear in CreateApiKey's and RotateApiKey's answers and nowhere else;
rotation makes the old secret and signing secret stop working at once (no grace
period: a client rotating its own key deploys the new one, then rotates again if
needed — a grace window would keep a possibly leaked secret alive).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from common.apikeys import ALL_USERS, KEY_ID_RE, NAME_MAX, ApiKeyRecord, ApiKeyStore, IssuedKey
from common.errors import FieldViolation, InvalidArgument, NotFound
from flickrhub.v1 import keys_pb2, keys_pb2_grpc
from gateway import identity
from gateway.authn import Authenticator
from gateway.validation import USER_ID_RE

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
MAX_LIMIT = 1_000_000


def _ts(value: Any) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_proto(record: ApiKeyRecord) -> keys_pb2.ApiKey:
    """The operator view of a key (never a secret)."""
    return keys_pb2.ApiKey(
        key_id=record.key_id,
        name=record.name,
        user_ids=list(record.user_ids),
        admin=record.admin,
        ip_allowlist=list(record.ip_allowlist),
        rate_limit_per_min=record.rate_limit_per_min,
        class_limits=keys_pb2.ClassLimits(**record.class_limits),
        revoked=record.revoked,
        created_at=_ts(record.created_at),
        rotated_at=_ts(record.rotated_at),
        last_used_at=_ts(record.last_used_at),
    )


def _issued(issued: IssuedKey) -> keys_pb2.ApiKeySecret:
    return keys_pb2.ApiKeySecret(
        key=to_proto(issued.record), api_key=issued.api_key, signing_secret=issued.signing_secret
    )


def create_violations(request: keys_pb2.CreateApiKeyRequest) -> list[FieldViolation]:
    """Every invalid field of a CreateApiKeyRequest."""
    bad: list[FieldViolation] = []
    if not request.name or len(request.name) > NAME_MAX or not request.name.isprintable():
        bad.append(FieldViolation("name", f"required; 1-{NAME_MAX} printable characters"))
    if not request.user_ids:
        bad.append(FieldViolation("user_ids", 'at least one user id ("*" = every user, admin keys only)'))
    for user in request.user_ids:
        if user == ALL_USERS and not request.admin:
            bad.append(FieldViolation("user_ids", '"*" (every user) is allowed only for admin keys'))
        elif user != ALL_USERS and not USER_ID_RE.fullmatch(user):
            bad.append(FieldViolation("user_ids", f"not a user id: {user[:40]!r}"))
    for cidr in request.ip_allowlist:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            bad.append(FieldViolation("ip_allowlist", f"not a CIDR: {cidr[:50]!r}"))
    if not 0 <= request.rate_limit_per_min <= MAX_LIMIT:
        bad.append(FieldViolation("rate_limit_per_min", f"0..{MAX_LIMIT} (0 = default)"))
    for name in ("read", "write", "upload"):
        if not 0 <= getattr(request.class_limits, name) <= MAX_LIMIT:
            bad.append(FieldViolation(f"class_limits.{name}", f"0..{MAX_LIMIT} (0 = no class limit)"))
    return bad


def _key_id(value: str) -> None:
    if not KEY_ID_RE.fullmatch(value):
        raise InvalidArgument("invalid key_id", [FieldViolation("key_id", "required; 4-32 of a-z 0-9")])


def _decode_page_token(token: str) -> str:
    try:
        key_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        key_id = ""
    if not KEY_ID_RE.fullmatch(key_id):
        raise InvalidArgument("invalid page_token", [FieldViolation("page_token", "not a token we issued")])
    return key_id


class ApiKeyServicer(keys_pb2_grpc.ApiKeyServiceServicer):
    """Key management; the auth interceptor has already required an admin key."""

    def __init__(self, store: ApiKeyStore, authenticator: Authenticator) -> None:
        self._store = store
        self._authn = authenticator

    async def CreateApiKey(
        self, request: keys_pb2.CreateApiKeyRequest, context: Context
    ) -> keys_pb2.ApiKeySecret:
        """A new key; its secrets are in this answer only."""
        bad = create_violations(request)
        if bad:
            raise InvalidArgument("invalid CreateApiKeyRequest: " + "; ".join(v.field for v in bad), bad)
        limits = {n: getattr(request.class_limits, n) for n in ("read", "write", "upload")}
        issued = await self._store.create(
            request.name,
            list(request.user_ids),
            admin=request.admin,
            ip_allowlist=list(request.ip_allowlist),
            rate_limit_per_min=request.rate_limit_per_min,
            class_limits=limits,
        )
        log.info("api key created", extra={"key_id": issued.record.key_id, "by": identity.client_id()})
        return _issued(issued)

    async def ListApiKeys(
        self, request: keys_pb2.ListApiKeysRequest, context: Context
    ) -> keys_pb2.ListApiKeysResponse:
        """Keys ordered by id, without secrets."""
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                "invalid page_size",
                [FieldViolation("page_size", f"0..{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")],
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        after = _decode_page_token(request.page_token) if request.page_token else ""
        found = await self._store.list(size + 1, after)
        page = found[:size]
        next_token = ""
        if len(found) > size:
            next_token = base64.urlsafe_b64encode(page[-1].key_id.encode()).decode().rstrip("=")
        return keys_pb2.ListApiKeysResponse(keys=[to_proto(r) for r in page], next_page_token=next_token)

    async def RotateApiKey(
        self, request: keys_pb2.RotateApiKeyRequest, context: Context
    ) -> keys_pb2.ApiKeySecret:
        """New secrets; the old ones stop working at once."""
        _key_id(request.key_id)
        issued = await self._store.rotate(request.key_id)
        self._authn.invalidate(request.key_id)
        if issued is None:
            raise NotFound(f"no live API key {request.key_id!r}", reason="API_KEY_NOT_FOUND")
        log.info("api key rotated", extra={"key_id": request.key_id, "by": identity.client_id()})
        return _issued(issued)

    async def RevokeApiKey(self, request: keys_pb2.RevokeApiKeyRequest, context: Context) -> keys_pb2.ApiKey:
        """Revoke for good."""
        _key_id(request.key_id)
        record = await self._store.revoke(request.key_id)
        self._authn.invalidate(request.key_id)
        if record is None:
            raise NotFound(f"no API key {request.key_id!r}", reason="API_KEY_NOT_FOUND")
        log.info("api key revoked", extra={"key_id": request.key_id, "by": identity.client_id()})
        return to_proto(record)
