"""Everything the sandbox remembers: apps, tokens, users, photo edits, faults, calls and nonces.

In memory only; one `SandboxState` per running sandbox, passed to `create_app`.
`reset()` forgets everything but the seeds (the demo app and token, seeded users).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sandbox.uploadbook import UploadBook

# Fixed demo values of `--seed-demo`; FlickrHub's dev stack receives them by config, never by import.
DEMO_CONSUMER_KEY: Final = "demo-consumer-key"
DEMO_CONSUMER_SECRET: Final = "demo-consumer-secret"
DEMO_TOKEN: Final = "72157600000000001-demo000000000001"
DEMO_TOKEN_SECRET: Final = "demo0000token0001"
DEMO_USER_NSID: Final = "10000001@N00"
DEMO_USERNAME: Final = "flickrhub-demo"
DEMO_PERMS: Final = "delete"

# How far an oauth_timestamp may be from the sandbox's clock, in seconds.
TIMESTAMP_WINDOW_S: Final = 300
FAULT_KINDS: Final = frozenset({"http_status", "flickr_error", "latency", "drop"})
PERMS: Final = frozenset({"read", "write", "delete"})


@dataclass(frozen=True)
class App:
    """A registered API key (the OAuth consumer)."""

    consumer_key: str
    consumer_secret: str


@dataclass(frozen=True)
class User:
    """A Flickr member that people.getInfo knows."""

    nsid: str
    username: str
    realname: str = ""
    location: str = ""


@dataclass(frozen=True)
class Token:
    """An access token granted to one user with one permission level."""

    token: str
    token_secret: str
    user_nsid: str
    username: str
    perms: str
    consumer_key: str | None = None  # None: valid with any registered consumer
    fullname: str = ""


@dataclass
class Fault:
    """A planned misbehaviour for the next `times` matching calls (-1: until cleared)."""

    id: str
    method: str
    kind: str
    status: int = 500
    code: int = 105
    message: str = "Service currently unavailable"
    latency_ms: int = 0
    times: int = 1

    def matches(self, method: str) -> bool:
        """True when this fault applies to a call of `method` and has uses left."""
        return self.times != 0 and self.method in ("*", method)

    def public(self) -> dict[str, Any]:
        """The JSON form shown by the control interface."""
        return dict(vars(self))


@dataclass(frozen=True)
class CallRecord:
    """One REST call as the sandbox saw and answered it."""

    method: str
    params: dict[str, str]
    http_status: int | None  # None: the connection was dropped
    stat: str | None  # None: no Flickr envelope (HTTP error, OAuth 401, drop)
    code: int | None
    consumer_key: str | None
    token: str | None
    ts: float

    def public(self) -> dict[str, Any]:
        """The JSON form shown by `GET /_sandbox/calls`."""
        return dict(vars(self))


SEED_USERS: Final = (
    User(DEMO_USER_NSID, DEMO_USERNAME, "FlickrHub Demo", "Localhost"),
    User("21207597@N07", "jamalfanaian", "Jamal Fanaian", "San Francisco, CA"),
    User("12037949754@N01", "bees", "Cal Henderson", "San Francisco, USA"),
)


@dataclass
class SandboxState:
    """The sandbox's whole memory; `clock` is injectable so tests can move time."""

    clock: Callable[[], float] = time.time
    apps: dict[str, App] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=lambda: {u.nsid: u for u in SEED_USERS})
    faults: list[Fault] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    photo_meta: dict[str, dict[str, str]] = field(default_factory=dict)
    deleted_photos: set[str] = field(default_factory=set)
    uploads: UploadBook = field(default_factory=UploadBook)
    _nonces: set[tuple[str, str, str, str]] = field(default_factory=set)
    _nonce_order: deque[tuple[float, tuple[str, str, str, str]]] = field(default_factory=deque)
    _seed_apps: dict[str, App] = field(default_factory=dict)
    _seed_tokens: dict[str, Token] = field(default_factory=dict)
    _fault_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def demo(cls, clock: Callable[[], float] = time.time) -> SandboxState:
        """A state seeded with the fixed demo app and demo user token (perms delete)."""
        state = cls(clock=clock)
        state.add_app(App(DEMO_CONSUMER_KEY, DEMO_CONSUMER_SECRET))
        state.add_token(
            Token(DEMO_TOKEN, DEMO_TOKEN_SECRET, DEMO_USER_NSID, DEMO_USERNAME, DEMO_PERMS, DEMO_CONSUMER_KEY)
        )
        state.mark_seeds()
        return state

    def mark_seeds(self) -> None:
        """Remember the current apps and tokens as the seeds that `reset()` restores."""
        self._seed_apps = dict(self.apps)
        self._seed_tokens = dict(self.tokens)

    def reset(self) -> None:
        """Forget faults, calls, nonces, photo edits and non-seed apps/tokens; restore revoked seeds."""
        self.apps = dict(self._seed_apps)
        self.tokens = dict(self._seed_tokens)
        self.users = {u.nsid: u for u in SEED_USERS}
        for token in self.tokens.values():
            self.users.setdefault(token.user_nsid, User(token.user_nsid, token.username, token.fullname))
        self.faults.clear()
        self.calls.clear()
        self.photo_meta.clear()
        self.deleted_photos.clear()
        self.uploads.clear()
        self._nonces.clear()
        self._nonce_order.clear()

    def add_app(self, app: App) -> None:
        """Register (or replace) a consumer key."""
        self.apps[app.consumer_key] = app

    def add_token(self, token: Token) -> None:
        """Register (or replace) an access token; its user becomes known to people.getInfo."""
        self.tokens[token.token] = token
        self.users.setdefault(token.user_nsid, User(token.user_nsid, token.username, token.fullname))

    def revoke_token(self, token: str) -> bool:
        """Forget an access token; False if it was not known."""
        return self.tokens.pop(token, None) is not None

    def add_fault(self, **spec: Any) -> Fault:
        """Plan a fault; `spec` holds the Fault fields other than id."""
        fault = Fault(id=f"f{next(self._fault_ids)}", **spec)
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str) -> Fault | None:
        """The first planned fault matching `method`, with one use consumed."""
        for fault in self.faults:
            if fault.matches(method):
                if fault.times > 0:
                    fault.times -= 1
                return fault
        return None

    def use_nonce(self, consumer_key: str, token: str, nonce: str, timestamp: str) -> bool:
        """Record a nonce; False if the same (consumer, token, nonce, timestamp) was seen before."""
        now = self.clock()
        # Entries older than twice the window can never be replayed: their timestamps are refused.
        while self._nonce_order and self._nonce_order[0][0] < now - 2 * TIMESTAMP_WINDOW_S:
            self._nonces.discard(self._nonce_order.popleft()[1])
        key = (consumer_key, token, nonce, timestamp)
        if key in self._nonces:
            return False
        self._nonces.add(key)
        self._nonce_order.append((now, key))
        return True

    def record(self, call: CallRecord) -> None:
        """Append one call to the call log."""
        self.calls.append(call)
