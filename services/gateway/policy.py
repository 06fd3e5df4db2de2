"""The one table of which RPC needs which role, and which rate-limit class it counts in.

Roles: OPEN (no credential: the RPCs the contract marks `(flickrhub.v1.no_credential)`,
i.e. Flickr's OAuth redirect), CLIENT (any valid key; the servicer then checks the user
the call acts for), ADMIN (admin keys only). Health and reflection are outside
FlickrHub's services and stay open. An RPC missing from the table and not marked in
the contract needs an admin key: forgetting a row fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import flickr_methods
from flickrhub.v1 import access_pb2, admin_pb2, auth_pb2, jobs_pb2, keys_pb2, legacy_pb2

OPEN = "open"
CLIENT = "client"
ADMIN = "admin"

READ = "read"
WRITE = "write"
UPLOAD = "upload"
FLICKR = "flickr"  # read or write, after the Flickr method the request names

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@dataclass(frozen=True)
class Rule:
    """What one RPC requires."""

    role: str
    method_class: str


_JOBS = "/flickrhub.v1.JobService/"
_ADMIN = "/flickrhub.v1.AdminService/"
_AUTH = "/flickrhub.v1.AuthService/"
_KEYS = "/flickrhub.v1.ApiKeyService/"
_LEGACY = "/flickrhub.v1.LegacyService/"

RULES: dict[str, Rule] = {
    _JOBS + "SubmitJob": Rule(CLIENT, FLICKR),
    _JOBS + "SubmitJobs": Rule(CLIENT, FLICKR),
    _JOBS + "UploadJob": Rule(CLIENT, UPLOAD),
    _JOBS + "GetJob": Rule(CLIENT, READ),
    _JOBS + "WatchJob": Rule(CLIENT, READ),
    _JOBS + "CancelJob": Rule(CLIENT, WRITE),
    _JOBS + "ListJobs": Rule(CLIENT, READ),
    _LEGACY + "SubmitLegacyJob": Rule(CLIENT, FLICKR),
    _LEGACY + "GetLegacyJobStatus": Rule(CLIENT, READ),
    _AUTH + "StartAuthorization": Rule(CLIENT, WRITE),
    _AUTH + "CompleteAuthorization": Rule(CLIENT, WRITE),
    _AUTH + "ListTokens": Rule(ADMIN, READ),
    _AUTH + "RevokeToken": Rule(ADMIN, WRITE),
    _ADMIN + "GetQueueStats": Rule(ADMIN, READ),
    _ADMIN + "InvalidateCache": Rule(ADMIN, WRITE),
    _KEYS + "CreateApiKey": Rule(ADMIN, WRITE),
    _KEYS + "ListApiKeys": Rule(ADMIN, READ),
    _KEYS + "RotateApiKey": Rule(ADMIN, WRITE),
    _KEYS + "RevokeApiKey": Rule(ADMIN, WRITE),
}
_UNLISTED = Rule(ADMIN, WRITE)
_UNCHECKED = Rule(OPEN, READ)
_NO_CREDENTIAL = Rule(OPEN, WRITE)

# The proto files of the services the gateway serves.
CONTRACT = (jobs_pb2, admin_pb2, auth_pb2, legacy_pb2, keys_pb2)


def _no_credential_methods() -> frozenset[str]:
    """Full gRPC method paths of the RPCs the contract marks `(flickrhub.v1.no_credential)`."""
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for module in CONTRACT
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.GetOptions().Extensions[access_pb2.no_credential]
    )


NO_CREDENTIAL = _no_credential_methods()
# The table wins over the contract's mark (a method in both needs its listed role): fails closed.
_RULE_BY_PATH = {**dict.fromkeys(NO_CREDENTIAL, _NO_CREDENTIAL), **RULES}


def rule(method_path: str) -> Rule:
    """The rule of a full gRPC method path."""
    if method_path.startswith(OPEN_PREFIXES):
        return _UNCHECKED
    return _RULE_BY_PATH.get(method_path, _UNLISTED)


def is_unchecked(method_path: str) -> bool:
    """Health and reflection: neither authenticated, limited nor audited."""
    return method_path.startswith(OPEN_PREFIXES)


def method_class(found: Rule, request: Any) -> str:
    """read, write or upload for this call (a Flickr method's class comes from its permission)."""
    if found.method_class != FLICKR:
        return found.method_class
    batch = getattr(request, "jobs", None)  # SubmitJobs: a write when any of its jobs writes
    methods = [str(j.method) for j in batch] if batch is not None else [str(getattr(request, "method", ""))]
    return WRITE if any(flickr_methods.is_write(m) for m in methods) else READ
