"""Who is calling: the caller identity the auth interceptor sets for each RPC, and the user check.

The interceptor (gateway.auth_interceptor) sets `current` before a servicer runs;
servicers call `require_user(user_id)` wherever a request acts for a FlickrHub
user, so "this key may act for that user" is decided in one place.
"""

from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass, field

import grpc

from common.apikeys import ALL_USERS, ApiKeyRecord
from common.errors import FlickrHubError


@dataclass
class Caller:
    """The authenticated key of the current call (None for open RPCs) and what it acted for."""

    key: ApiKeyRecord | None
    client_ip: str
    method: str = "none"  # "bearer", "hmac" or "none"
    acted_for: list[str] = field(default_factory=list)
    epoch: int = 0  # the key's epoch its (possibly cached) check was made under (keys.api_key_epoch)

    @property
    def client_id(self) -> str:
        """What job documents record as their client: the key id."""
        return self.key.key_id if self.key else "anonymous"


current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("flickrhub_caller", default=None)


class PermissionDenied(FlickrHubError):
    """The caller is authenticated but may not do this."""

    def __init__(self, message: str, reason: str = "PERMISSION_DENIED") -> None:
        super().__init__(message, reason, grpc.StatusCode.PERMISSION_DENIED)


def user_id_hash(user_id: str) -> str:
    """What the audit log keeps of a user id."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:32]


def require_user(user_id: str) -> None:
    """PERMISSION_DENIED unless the calling key may act for `user_id`."""
    caller = current.get()
    if caller is None or caller.key is None:
        # Only reachable when a servicer runs without the interceptor (a wiring bug): refuse.
        raise PermissionDenied("this call needs an API key bound to the user")
    caller.acted_for.append(user_id)
    if not caller.key.may_act_for(user_id):
        raise PermissionDenied(f"this API key may not act for user_id {user_id!r}", "USER_NOT_ALLOWED")


def client_id() -> str:
    """The calling key's id ("anonymous" outside an authenticated call)."""
    caller = current.get()
    return caller.client_id if caller else "anonymous"


def is_admin() -> bool:
    """True when the calling key is an admin key."""
    caller = current.get()
    return bool(caller and caller.key and caller.key.admin)


def acts_for_every_user() -> bool:
    """True when the calling key is bound to "*" (every user)."""
    caller = current.get()
    return bool(caller and caller.key and ALL_USERS in caller.key.user_ids)
