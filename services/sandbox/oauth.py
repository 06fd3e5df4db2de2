"""Flickr's OAuth 1.0a endpoints in the sandbox: request_token, the authorize page, access_token.

- `/services/oauth/request_token` (GET/POST) checks the consumer signature (key
  `consumer_secret&`) and requires `oauth_callback` (`oob` or a URL).
- `/services/oauth/authorize?oauth_token=…&perms=…` shows an approval page; POSTing its
  form (`decision=approve|deny`, `user_nsid` picks the approving sandbox user) approves:
  a URL callback gets a 302 to `cb?oauth_token=…&oauth_verifier=<16 hex>`, `oob` a page
  showing `NNN-NNN-NNN`; deny issues no verifier.
- `/services/oauth/access_token` (GET/POST) checks the signature (key
  `consumer_secret&request_secret`), the verifier, and is single use; the access token it
  grants works for REST calls with the approved perms.
- `GET /_sandbox/oauth/pending` lists the pending request tokens with their secret, state and
  verifier (tests and demos may read verifiers there instead of scraping the page).

Failures are HTTP 401 text/plain `oauth_problem=…` (docs/flickr-api.md §2.4). Flickr's exact
answers to a wrong verifier and a denied request are unverified; the sandbox says
`verifier_invalid` and `permission_denied` (RFC 5849 problem-reporting names).
"""

from __future__ import annotations

import html
import secrets
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from common.oauth1 import base_string, verify
from sandbox import control, envelope
from sandbox.params import RestRequest, read_request
from sandbox.state import PERMS, TIMESTAMP_WINDOW_S, App, SandboxState, Token

PREFIX: Final = "/services/oauth"
# Flickr's request tokens are short-lived; an hour is generous (the real lifetime is unverified).
REQUEST_TOKEN_TTL_S: Final = 3600
_REQUIRED: Final = ("oauth_consumer_key", "oauth_nonce", "oauth_timestamp", "oauth_signature_method")


@dataclass
class PendingRequest:
    """A request token from request_token until access_token consumes it."""

    token: str
    secret: str
    consumer_key: str
    callback: str
    created: float
    state: str = "new"  # new → approved | denied
    perms: str = ""
    verifier: str = ""
    user_nsid: str = ""

    def public(self) -> dict[str, str | float]:
        """The JSON form shown by `GET /_sandbox/oauth/pending` (the sandbox has no real secrets)."""
        return {
            "oauth_token": self.token,
            "oauth_token_secret": self.secret,
            "callback": self.callback,
            "state": self.state,
            "perms": self.perms,
            "verifier": self.verifier,
            "user_nsid": self.user_nsid,
            "created": self.created,
        }


@dataclass
class OAuthBook:
    """The sandbox's pending request tokens."""

    requests: dict[str, PendingRequest] = field(default_factory=dict)

    def live(self, token: str, now: float) -> PendingRequest | None:
        """The pending request of `token` unless unknown or expired (expired ones are forgotten)."""
        pending = self.requests.get(token)
        if pending is not None and pending.created + REQUEST_TOKEN_TTL_S < now:
            del self.requests[token]
            return None
        return pending


BOOK: Final = web.AppKey("sandbox_oauth_book", OAuthBook)


class _Problem(Exception):
    def __init__(self, problem: str, **details: str) -> None:
        super().__init__(problem)
        self.response = envelope.oauth_problem(problem, **details)


def new_token() -> str:
    """A token shaped like Flickr's: 17 digits, a dash, 16 hex."""
    return f"72157{secrets.randbelow(10**12):012d}-{secrets.token_hex(8)}"


def _check(state: SandboxState, req: RestRequest, extra: tuple[str, ...]) -> App:
    """The consumer of a signed OAuth endpoint request whose parameters are all present."""
    params = req.params
    absent = [name for name in (*_REQUIRED, "oauth_signature", *extra) if not params.get(name)]
    if req.header_malformed:
        raise _Problem("signature_invalid")
    if absent:
        raise _Problem("parameter_absent", oauth_parameters_absent="&".join(absent))
    app = state.apps.get(params["oauth_consumer_key"])
    if app is None:
        raise _Problem("consumer_key_unknown")
    if params["oauth_signature_method"] != "HMAC-SHA1":
        raise _Problem("signature_method_rejected")
    return app


def _check_signature(state: SandboxState, req: RestRequest, app: App, token_secret: str) -> None:
    """Signature, then timestamp window, then nonce (as the REST endpoint orders them)."""
    if not verify(req.http_method, req.url, req.pairs, app.consumer_secret, token_secret):
        raise _Problem("signature_invalid", debug_sbs=base_string(req.http_method, req.url, req.pairs))
    params, now = req.params, int(state.clock())
    timestamp = params["oauth_timestamp"]
    if not timestamp.isdigit() or abs(int(timestamp) - now) > TIMESTAMP_WINDOW_S:
        window = f"{now - TIMESTAMP_WINDOW_S}-{now + TIMESTAMP_WINDOW_S}"
        raise _Problem("timestamp_refused", oauth_acceptable_timestamps=window)
    if not state.use_nonce(app.consumer_key, params.get("oauth_token", ""), params["oauth_nonce"], timestamp):
        raise _Problem("nonce_used")


def _form_text(pairs: list[tuple[str, str]]) -> web.Response:
    # %20 and %40 as Flickr encodes them (`fullname=Jamal%20Fanaian`), not form-style "+".
    text = urlencode(pairs, safe="", quote_via=quote)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def request_token(request: web.Request) -> web.Response:
    """Issue a request token to a correctly signed consumer that named a callback."""
    state = request.app[control.STATE]
    req = await read_request(request)
    try:
        app = _check(state, req, ("oauth_callback",))
        callback = req.params["oauth_callback"]
        if callback != "oob" and urlsplit(callback).scheme not in ("http", "https"):
            raise _Problem("parameter_rejected", oauth_parameters_rejected="oauth_callback")
        _check_signature(state, req, app, "")
    except _Problem as problem:
        return problem.response
    pending = PendingRequest(new_token(), secrets.token_hex(8), app.consumer_key, callback, state.clock())
    request.app[BOOK].requests[pending.token] = pending
    return _form_text(
        [
            ("oauth_callback_confirmed", "true"),
            ("oauth_token", pending.token),
            ("oauth_token_secret", pending.secret),
        ]
    )


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def _oops(message: str, status: int = 400) -> web.Response:
    return _page("Oops!", f"<p class='error'>{html.escape(message)}</p>", status)


async def authorize_page(request: web.Request) -> web.Response:
    """GET: the approval page for a request token and a permission level."""
    state = request.app[control.STATE]
    token, perms = request.query.get("oauth_token", ""), request.query.get("perms", "")
    pending = request.app[BOOK].live(token, state.clock())
    if pending is None or pending.state != "new":
        return _oops("This request token is invalid, expired or already used.", 404)
    if perms not in PERMS:
        return _oops("Flickr doesn't recognise the permission set.")
    options = "".join(
        f"<option value='{html.escape(u.nsid)}'>{html.escape(u.username)} ({html.escape(u.nsid)})</option>"
        for u in state.users.values()
    )
    form = (
        f"<p>The app <b>{html.escape(pending.consumer_key)}</b> asks for <b>{html.escape(perms)}</b> "
        "access to your Flickr account.</p>\n"
        f"<form method='post' action='{PREFIX}/authorize'>\n"
        f"<input type='hidden' name='oauth_token' value='{html.escape(token)}'>\n"
        f"<input type='hidden' name='perms' value='{html.escape(perms)}'>\n"
        f"<label>Sign in as <select name='user_nsid'>{options}</select></label>\n"
        "<button type='submit' name='decision' value='approve'>OK, I'll authorize it</button>\n"
        "<button type='submit' name='decision' value='deny'>No thanks</button>\n"
        "</form>"
    )
    return _page("Authorize an app", form)


async def authorize_decision(request: web.Request) -> web.Response:
    """POST: the user's decision; approve issues a verifier (redirect or oob page), deny none."""
    state = request.app[control.STATE]
    form = await request.post()
    token, perms = str(form.get("oauth_token", "")), str(form.get("perms", ""))
    decision, nsid = str(form.get("decision", "")), str(form.get("user_nsid", ""))
    pending = request.app[BOOK].live(token, state.clock())
    if pending is None or pending.state != "new":
        return _oops("This request token is invalid, expired or already used.", 404)
    if perms not in PERMS:
        return _oops("Flickr doesn't recognise the permission set.")
    if decision == "deny":
        pending.state = "denied"
        return _page("Access denied", "<p>You did not authorize the app. You can close this window.</p>")
    if decision != "approve":
        return _oops("Choose to authorize the app or not.")
    user = state.users.get(nsid) if nsid else next(iter(state.users.values()), None)
    if user is None:
        return _oops("Unknown sandbox user.")
    pending.state, pending.perms, pending.user_nsid = "approved", perms, user.nsid
    if pending.callback == "oob":
        digits = f"{secrets.randbelow(10**9):09d}"
        pending.verifier = f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
        body = (
            "<p>Copy this code into the app to finish authorizing it:</p>\n"
            f"<p><span class='verifier' id='verifier'>{pending.verifier}</span></p>"
        )
        return _page("Authorized", body)
    pending.verifier = secrets.token_hex(8)
    separator = "&" if urlsplit(pending.callback).query else "?"
    query = urlencode({"oauth_token": pending.token, "oauth_verifier": pending.verifier})
    raise web.HTTPFound(f"{pending.callback}{separator}{query}")


async def access_token(request: web.Request) -> web.Response:
    """Exchange an approved request token and its verifier for an access token, once."""
    state = request.app[control.STATE]
    book = request.app[BOOK]
    req = await read_request(request)
    try:
        app = _check(state, req, ("oauth_token", "oauth_verifier"))
        pending = book.live(req.params["oauth_token"], state.clock())
        if pending is None or pending.consumer_key != app.consumer_key:
            raise _Problem("token_rejected")
        _check_signature(state, req, app, pending.secret)
        if pending.state == "denied":
            raise _Problem("permission_denied")
        given = req.params["oauth_verifier"]
        if pending.state != "approved" or not secrets.compare_digest(given, pending.verifier):
            raise _Problem("verifier_invalid")
    except _Problem as problem:
        return problem.response
    del book.requests[pending.token]
    user = state.users[pending.user_nsid]
    token = Token(
        token=new_token(),
        token_secret=secrets.token_hex(8),
        user_nsid=user.nsid,
        username=user.username,
        perms=pending.perms,
        consumer_key=app.consumer_key,
        fullname=user.realname,
    )
    state.add_token(token)
    # Keys in alphabetical order, as Flickr answers (docs/flickr-api.md §2.1).
    return _form_text(
        [
            ("fullname", token.fullname),
            ("oauth_token", token.token),
            ("oauth_token_secret", token.token_secret),
            ("user_nsid", token.user_nsid),
            ("username", token.username),
        ]
    )


async def list_pending(request: web.Request) -> web.Response:
    """GET /_sandbox/oauth/pending → every pending request token (oldest first)."""
    return web.json_response([p.public() for p in request.app[BOOK].requests.values()])


def install(app: web.Application) -> None:
    """Add the OAuth endpoints, their state and the control route to a sandbox app."""
    app[BOOK] = OAuthBook()
    app.router.add_route("GET", f"{PREFIX}/request_token", request_token)
    app.router.add_route("POST", f"{PREFIX}/request_token", request_token)
    app.router.add_route("GET", f"{PREFIX}/authorize", authorize_page)
    app.router.add_route("POST", f"{PREFIX}/authorize", authorize_decision)
    app.router.add_route("GET", f"{PREFIX}/access_token", access_token)
    app.router.add_route("POST", f"{PREFIX}/access_token", access_token)
    app.router.add_route("GET", f"{control.PREFIX}/oauth/pending", list_pending)
