"""Authentication of a call: a bearer API key or an HMAC-signed request, and the client's address.

Bearer: `authorization: Bearer fhk_<id>_<secret>` or `x-api-key: fhk_…`. One
indexed lookup by key id, then bcrypt (in a thread) — unless the same key and
secret were verified within API_KEY_CACHE_S, when neither is paid again.

A cached check is tied to the key's epoch (keys.api_key_epoch), read before the
record; the rate-limit step of every call compares it with Redis in the same
Lua call (gateway.ratelimit), and a rotation or revocation on any replica bumps
it, so every replica reloads the key on its next call (`authenticate(recheck=True)`).
Signed: `x-api-key-id`, `x-timestamp`, `x-nonce`, `x-signature` over the canonical
string of common.signing; the nonce is remembered (SET NX) for twice the skew
window, after the signature checked out, so a replay is refused.

Every refusal of a key says only "invalid credentials": never which part was wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter
from redis.exceptions import RedisError

from common import keys, redisio, signing
from common.apikeys import ApiKeyRecord, ApiKeyStore, check_secret, parse_key
from common.errors import FlickrHubError, Unavailable
from gateway.identity import Caller, PermissionDenied

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BCRYPT_CHECKS = Counter("flickrhub_api_key_bcrypt_checks_total", "bcrypt verifications of presented keys.")
AUTH_FAILURES = Counter("flickrhub_auth_failures_total", "Calls refused by authentication.", ["reason"])

# Metadata the REST edge adds (it is a trusted proxy): the HTTP request that was signed.
EDGE_METHOD = "x-fh-http-method"
EDGE_PATH = "x-fh-http-path"
EDGE_QUERY = "x-fh-http-query"
EDGE_BODY_SHA256 = "x-fh-body-sha256"
_MISSING_HELP = (
    "missing credentials: send 'authorization: Bearer <api key>' or 'x-api-key', or sign the request "
    "(x-api-key-id, x-timestamp, x-nonce, x-signature; see docs/auth.md)"
)


class Unauthenticated(FlickrHubError):
    """No usable credential; the message never says which part of a key was wrong."""

    def __init__(self, message: str = "invalid credentials", reason: str = "INVALID_CREDENTIALS") -> None:
        super().__init__(message, reason, grpc.StatusCode.UNAUTHENTICATED)


@dataclass
class _Cached:
    record: ApiKeyRecord
    doc: dict[str, Any]
    expires: float
    epoch: int = 0
    verified: set[str] = field(default_factory=set)
    signing_secret: str | None = None


@dataclass(frozen=True)
class Request:
    """What authentication needs to know about one call."""

    method_path: str
    metadata: dict[str, str]
    peer: str
    body_sha256: str  # of the serialized request (empty-bytes hash for client streams)


def peer_ip(peer: str) -> str:
    """The address in a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`); "" for others."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


def _in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> tuple[str, bool]:
    """(client address, whether the peer is a trusted proxy).

    x-forwarded-for counts only when the peer is a trusted proxy, and then the client is
    the rightmost hop that is not itself trusted: hops further left were written by
    the client and prove nothing.
    """
    address = peer_ip(peer)
    if not _in(address, trusted):
        return address, False
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop, True
    return (hops[0] if hops else address), True


def _canonical_request(call: Request, trusted_peer: bool, timestamp: str, nonce: str) -> str:
    """The canonical string (common.signing) the client signed: through the edge, the HTTP request
    (the edge computed the body hash); else the gRPC call, as a POST of its serialized request."""
    md = call.metadata
    if trusted_peer and EDGE_METHOD in md:
        return signing.canonical_string(
            md[EDGE_METHOD],
            md.get(EDGE_PATH, ""),
            md.get(EDGE_QUERY, ""),
            md.get(EDGE_BODY_SHA256, signing.EMPTY_SHA256),
            timestamp,
            nonce,
        )
    return signing.canonical_string("POST", call.method_path, "", call.body_sha256, timestamp, nonce)


# Client addresses remembered (see Authenticator.client_address); past this many, all are forgotten.
ADDRESSES_MAX = 4096


class Authenticator:
    """Turns a call's metadata into a Caller, or raises UNAUTHENTICATED / PERMISSION_DENIED."""

    def __init__(
        self,
        store: ApiKeyStore,
        redis: redisio.Redis,
        *,
        cache_s: float,
        skew_s: int,
        trusted_proxies: Sequence[Network],
        bcrypt_concurrency: int,
        cache_max: int = 10_000,
        addresses_max: int = ADDRESSES_MAX,
    ) -> None:
        """`bcrypt_concurrency` (API_KEY_BCRYPT_CONCURRENCY): bcrypt is ~0.2 s of CPU, so at most that
        many checks run at once and a flood of bad keys cannot take every thread."""
        self._store = store
        self._redis = redis
        self._cache_s = cache_s
        self._cache_max = cache_max
        self._skew_s = skew_s
        self._trusted = tuple(trusted_proxies)
        self._addresses: dict[tuple[str, str], tuple[str, bool]] = {}
        self._addresses_max = addresses_max
        self._cache: OrderedDict[str, _Cached] = OrderedDict()  # least recently used first
        # Single flight: concurrent calls with one key share one lookup and one bcrypt check, so a
        # cache expiry under load costs one of each, not one per waiting call.
        self._loading: dict[str, asyncio.Future[_Cached]] = {}
        self._reloading: dict[str, asyncio.Future[_Cached]] = {}
        self._checking: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._bcrypt = asyncio.Semaphore(bcrypt_concurrency)
        self.used: set[str] = set()  # key ids seen since the last last_used_at flush
        self.bcrypt_checks = 0
        self.lookups = 0

    def invalidate(self, key_id: str) -> None:
        """Forget a key's cached verification (after rotate or revoke on this replica)."""
        self._cache.pop(key_id, None)

    async def flush_last_used(self) -> None:
        """Write last_used_at of the keys used since the last flush (off the request path)."""
        used, self.used = self.used, set()
        await self._store.touch(used)

    def client_address(self, peer: str, metadata: dict[str, str]) -> tuple[str, bool]:
        """(client address, peer is a trusted proxy), remembered per (peer, x-forwarded-for): a
        connection's calls share a peer, and parsing addresses was 2-3% of a SubmitJob's CPU."""
        forwarded = metadata.get("x-forwarded-for", "")
        known = self._addresses.get((peer, forwarded))
        if known is None:
            if len(self._addresses) >= self._addresses_max:
                self._addresses.clear()
            known = self._addresses[(peer, forwarded)] = client_ip(peer, forwarded, self._trusted)
        return known

    @property
    def cached_keys(self) -> int:
        """Keys whose verification is held in memory."""
        return len(self._cache)

    async def authenticate(
        self, call: Request, address: str, trusted_peer: bool, *, recheck: bool = False
    ) -> Caller:
        """The caller of `call`; raises Unauthenticated or PermissionDenied.

        `recheck`: the key's epoch moved since its check was cached; reload the record and verify
        the call again (a signed call's nonce was already recorded by the first pass).
        """
        md = call.metadata
        bearer = md.get("authorization", "")
        presented = md.get("x-api-key", "")
        if bearer:
            scheme, _, token = bearer.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated("unsupported authorization scheme: use 'Bearer <api key>'")
            presented = token.strip()
        if presented:
            entry = await self._bearer(presented, recheck)
            caller = Caller(entry.record, address, "bearer", epoch=entry.epoch)
        elif md.get(signing.HEADER_SIGNATURE) or md.get(signing.HEADER_KEY_ID):
            entry = await self._signed(call, trusted_peer, recheck)
            caller = Caller(entry.record, address, "hmac", epoch=entry.epoch)
        else:
            raise Unauthenticated(_MISSING_HELP, "MISSING_CREDENTIALS")
        record = entry.record
        if not record.allows_ip(address):
            raise PermissionDenied("this API key is not allowed from this address", "IP_NOT_ALLOWED")
        self.used.add(record.key_id)
        return caller

    async def _entry(self, key_id: str, reload: bool = False) -> _Cached:
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > time.monotonic() and not reload:
            self._cache.move_to_end(key_id)
            return cached
        # A reload joins only another reload: a plain lookup in flight may predate the new epoch.
        flights = self._reloading if reload else self._loading
        loading = flights.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key_id, cached))
            flights[key_id] = loading
            loading.add_done_callback(lambda _: flights.pop(key_id, None))
        return await asyncio.shield(loading)

    async def _moved(self, entry: _Cached) -> bool:
        """True when the key was rotated or revoked since `entry` was loaded."""
        try:
            return int(await self._redis.get(keys.api_key_epoch(entry.record.key_id)) or 0) != entry.epoch
        except RedisError as exc:
            raise Unavailable("API key store unavailable; retry shortly") from exc

    async def _load(self, key_id: str, previous: _Cached | None) -> _Cached:
        self.lookups += 1
        # The epoch first, then the record: a rotation or revocation that lands in between bumps
        # the epoch after its write, so this entry is seen as stale on its first use.
        try:
            epoch = int(await self._redis.get(keys.api_key_epoch(key_id)) or 0)
        except RedisError as exc:
            raise Unavailable("API key store unavailable; retry shortly") from exc
        doc = await self._store.find(key_id)
        if doc is None or doc.get("revoked"):
            self._cache.pop(key_id, None)
            raise Unauthenticated()
        entry = _Cached(self._store.record(doc), doc, time.monotonic() + self._cache_s, epoch)
        if previous is not None and previous.doc.get("secret_hash") == doc.get("secret_hash"):
            entry.verified = previous.verified  # same secret: what was verified stays verified
        if previous is not None and previous.doc.get("signing_secret") == doc.get("signing_secret"):
            entry.signing_secret = previous.signing_secret
        if self._cache_s > 0:
            self._cache[key_id] = entry
            self._cache.move_to_end(key_id)
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return entry

    async def _bearer(self, presented: str, reload: bool) -> _Cached:
        parsed = parse_key(presented)
        if parsed is None:
            raise Unauthenticated()
        key_id, secret = parsed
        entry = await self._entry(key_id, reload)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if digest in entry.verified:
            return entry
        if not reload and await self._moved(entry):
            # A secret not verified yet may be the one a rotation on another replica just issued.
            entry = await self._entry(key_id, reload=True)
        flight = (key_id, digest)
        checking = self._checking.get(flight)
        if checking is None:
            checking = asyncio.ensure_future(self._check(secret, str(entry.doc.get("secret_hash", ""))))
            self._checking[flight] = checking
            checking.add_done_callback(lambda _: self._checking.pop(flight, None))
        if not await asyncio.shield(checking):
            raise Unauthenticated()
        entry.verified.add(digest)
        return entry

    async def _check(self, secret: str, hashed: str) -> bool:
        async with self._bcrypt:
            self.bcrypt_checks += 1
            BCRYPT_CHECKS.inc()
            return await asyncio.to_thread(check_secret, secret, hashed)

    async def _signed(self, call: Request, trusted_peer: bool, reload: bool) -> _Cached:
        """The key that signed `call`: its headers checked, the signature verified (once more after a
        reload, for a secret a rotation on another replica just issued), then the nonce spent."""
        key_id, timestamp, nonce, presented = self._signature_headers(call.metadata)
        entry = await self._entry(key_id, reload) if len(key_id) <= 32 else None
        if entry is None:
            raise Unauthenticated()
        canonical = _canonical_request(call, trusted_peer, timestamp, nonce)
        if not self._signs(entry, canonical, presented):
            # Perhaps signed with the secret a rotation on another replica just issued.
            if reload or not await self._moved(entry):
                raise Unauthenticated()
            entry = await self._entry(key_id, reload=True)
            if not self._signs(entry, canonical, presented):
                raise Unauthenticated()
        if not reload:  # a reload's nonce was recorded by the call's first pass
            await self._spend_nonce(key_id, nonce)
        return entry

    def _signature_headers(self, md: dict[str, str]) -> tuple[str, str, str, str]:
        """A signed call's (key id, timestamp, nonce, signature); Unauthenticated when one is missing or
        malformed, or the timestamp is further than AUTH_CLOCK_SKEW_S from the server's clock."""
        key_id = md.get(signing.HEADER_KEY_ID, "")
        timestamp = md.get(signing.HEADER_TIMESTAMP, "")
        nonce = md.get(signing.HEADER_NONCE, "")
        presented = md.get(signing.HEADER_SIGNATURE, "")
        if not (key_id and timestamp and nonce and presented):
            raise Unauthenticated(
                "a signed request needs x-api-key-id, x-timestamp, x-nonce and x-signature",
                "MISSING_CREDENTIALS",
            )
        if not (timestamp.isdigit() and len(timestamp) <= 12) or not signing.NONCE_RE.fullmatch(nonce):
            raise Unauthenticated()
        if abs(time.time() - int(timestamp)) > self._skew_s:
            raise Unauthenticated(
                f"x-timestamp is more than {self._skew_s} s away from the server's clock", "TIMESTAMP_SKEW"
            )
        return key_id, timestamp, nonce, presented

    def _signs(self, entry: _Cached, canonical: str, presented: str) -> bool:
        """Whether `presented` is the signature of `canonical` under the key's signing secret (decrypted
        once per loaded key)."""
        if entry.signing_secret is None:
            entry.signing_secret = self._store.signing_secret(entry.doc)
        return signing.matches(entry.signing_secret, canonical, presented)

    async def _spend_nonce(self, key_id: str, nonce: str) -> None:
        """Remember the nonce for twice the skew window (SET NX): a replay of the call is refused."""
        try:
            fresh = await self._redis.set(
                keys.api_key_nonce(key_id, nonce), "1", nx=True, ex=2 * self._skew_s
            )
        except RedisError as exc:
            raise Unavailable("nonce store unavailable; retry shortly") from exc
        if not fresh:
            raise Unauthenticated("this signed request was already used (nonce replayed)", "REPLAYED")
