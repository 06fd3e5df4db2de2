"""What a Flickr call carries: its parameters merged from the query string, the form body and the
OAuth Authorization header (`RestRequest`), read alike by the REST, OAuth and upload endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from common.oauth1 import parse_authorization_header

_FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclass
class RestRequest:
    """One REST request with its parameters merged from query, body and Authorization header."""

    http_method: str
    url: str  # the base-string URL as the client addressed it
    pairs: list[tuple[str, str]]  # every parameter, in arrival order, for the signature
    header_malformed: bool = False
    params: dict[str, str] = field(init=False)  # first value of each name

    def __post_init__(self) -> None:
        self.params = {}
        for name, value in self.pairs:
            self.params.setdefault(name, value)

    @property
    def method(self) -> str:
        """The Flickr method asked for ("" when missing)."""
        return self.params.get("method", "")

    @property
    def consumer_key(self) -> str | None:
        """The API key: oauth_consumer_key under OAuth, else api_key."""
        return self.params.get("oauth_consumer_key") or self.params.get("api_key") or None

    @property
    def uses_oauth(self) -> bool:
        """True when any OAuth protocol parameter (or an OAuth header) came with the request."""
        return self.header_malformed or any(name.startswith("oauth_") for name in self.params)


async def read_request(request: web.Request) -> RestRequest:
    """Merge query, form or multipart body (file parts excluded) and Authorization header params."""
    pairs = query_pairs(request)
    if request.method == hdrs.METH_POST and request.content_type in _FORM_TYPES:
        pairs += await form_pairs(request)
    return rest_request(request, pairs)


def query_pairs(request: web.Request) -> list[tuple[str, str]]:
    """The query string's parameters in order, blank values kept."""
    return parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)


async def form_pairs(request: web.Request) -> list[tuple[str, str]]:
    """The text fields of a form body; file parts (an upload's `photo`) are never part of the signature."""
    form = await request.post()
    return [(name, value) for name, value in form.items() if isinstance(value, str)]


def rest_request(request: web.Request, pairs: list[tuple[str, str]]) -> RestRequest:
    """The call of `pairs` plus the Authorization header's OAuth parameters, at the URL the client signed."""
    malformed = False
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if header[:6].lower() == "oauth ":
        try:
            pairs += [(k, v) for k, v in parse_authorization_header(header).items() if k != "realm"]
        except ValueError:
            malformed = True
    # Behind a TLS-terminating proxy the client signed https://…; honour what it says it used.
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip().lower()
    url = f"{scheme}://{request.host}{request.rel_url.raw_path}"
    return RestRequest(request.method, url, pairs, malformed)
