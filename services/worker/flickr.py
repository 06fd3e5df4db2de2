"""Calling Flickr's REST endpoint: OAuth 1.0a signing, the JSON envelope, and failure classification."""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from opentelemetry import trace

from common import flickr_errors, oauth1, telemetry
from common.flickr_errors import Failure
from common.settings import FlickrEndpoints
from common.tokens import TokenRecord
from worker import metrics

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Success:
    """Flickr answered stat=ok."""

    body: dict[str, Any]


@contextlib.contextmanager
def http_span(method: str, url: str) -> Iterator[tuple[trace.Span, dict[str, str]]]:
    """The client span of one HTTP request to Flickr, and the headers that carry its trace context."""
    with telemetry.span(
        method,
        kind=trace.SpanKind.CLIENT,
        attributes={telemetry.ATTR_HTTP_METHOD: method, telemetry.ATTR_URL: url.split("?", 1)[0]},
    ) as span:
        yield span, dict(telemetry.inject_fields({}))


class FlickrClient:
    """One aiohttp session to Flickr (or the sandbox) shared by a worker's jobs."""

    def __init__(self, endpoints: FlickrEndpoints, timeout_s: float) -> None:
        self._endpoints = endpoints
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool."""
        # No aiohttp trace config: `http_span` makes the one client span a call needs (the
        # instrumentation's per-request signals cost more than the span itself).
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
            headers={"User-Agent": "FlickrHub/0.1"},
        )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (for the upload client); start() first."""
        assert self._session is not None, "start() first"
        return self._session

    @property
    def endpoints(self) -> FlickrEndpoints:
        """Where calls go and the app credentials that sign them."""
        return self._endpoints

    async def call_rest(self, method: str, params: dict[str, str], token: TokenRecord) -> Success | Failure:
        """POST one signed REST call (form-encoded, like flickrapi) and classify the answer."""
        assert self._session is not None, "start() first"
        url = self._endpoints.rest
        creds = oauth1.Credentials(
            self._endpoints.consumer_key,
            self._endpoints.consumer_secret,
            token.oauth_token,
            token.oauth_token_secret,
        )
        form = {**params, "method": method, "format": "json", "nojsoncallback": "1"}
        signed = oauth1.signed_params("POST", url, form, creds)
        started = time.perf_counter()
        with telemetry.span(telemetry.SPAN_FLICKR_CALL, kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute(telemetry.ATTR_METHOD, method)
            outcome = await self._post(url, signed)
            if isinstance(outcome, Failure):
                span.set_attribute(telemetry.ATTR_FLICKR_CODE, outcome.flickr_code)
                span.set_status(trace.StatusCode.ERROR, outcome.code)
        metrics.FLICKR_SECONDS.observe(time.perf_counter() - started)
        metrics.FLICKR_CALLS.labels(result="ok" if isinstance(outcome, Success) else outcome.code).inc()
        return outcome

    async def _post(self, url: str, form: dict[str, str]) -> Success | Failure:
        assert self._session is not None
        # Encoded here as aiohttp's FormData would (urlencode), without its per-request machinery;
        # the answer is parsed from its bytes (no charset sniffing).
        payload = urllib.parse.urlencode(form).encode()
        try:
            with http_span("POST", url) as (span, headers):
                headers["Content-Type"] = FORM_CONTENT_TYPE
                post = self._session.post(url, data=payload, headers=headers, allow_redirects=False)
                async with post as resp:
                    raw = await resp.read()
                    status = resp.status
                    span.set_attribute(telemetry.ATTR_HTTP_STATUS, status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return flickr_errors.from_transport(exc)
        if status != 200:
            return flickr_errors.from_http(status, raw.decode("utf-8", "replace"))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return flickr_errors.bad_payload("not JSON")
        if not isinstance(body, dict) or body.get("stat") not in {"ok", "fail"}:
            return flickr_errors.bad_payload("no stat field")
        if body["stat"] == "fail":
            try:
                code = int(body.get("code", 0))
            except (TypeError, ValueError):
                code = 0
            return flickr_errors.from_envelope(code, str(body.get("message", "")))
        return Success(body)
