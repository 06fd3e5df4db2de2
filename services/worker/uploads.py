"""Executing upload and replace jobs: a signed multipart POST streamed from GridFS, XML answers, tickets.

Signing follows flickrapi's trick (docs/flickr-api.md §6): every form field but `photo`
is signed into an `Authorization: OAuth …` header while the fields themselves
travel in the multipart body. The photo is streamed from the blob store chunk
by chunk with its length known, so the request carries a Content-Length and
never holds the photo in memory. Flickr answers in XML only; with `async=1`
it answers a ticket, followed with `flickr.photos.upload.checkTickets` until it
completes (photo id), fails, or UPLOAD_TICKET_TIMEOUT_S runs out. Uploads are
writes: never cached, and a success invalidates the token's cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
from aiohttp.payload import AsyncIterablePayload
from opentelemetry import trace
from pymongo.errors import PyMongoError

from common import flickr_errors, oauth1, telemetry
from common.blobs import BlobStore
from common.flickr_errors import Failure
from common.jobs import JobEntry
from common.tokens import TokenRecord
from worker import metrics
from worker.flickr import FlickrClient, Success, http_span

CHECK_TICKETS = "flickr.photos.upload.checkTickets"
BLOB_UNAVAILABLE = "BLOB_STORE_UNAVAILABLE"
# First wait between two checkTickets calls; it doubles up to TICKET_POLL_MAX_S.
TICKET_POLL_INITIAL_S = 0.25
TICKET_POLL_MAX_S = 10.0


@dataclass(frozen=True)
class UploadAnswer:
    """A stat=ok upload or replace answer: a photo id (replace adds secrets), or an async ticket."""

    photoid: str = ""
    secret: str = ""
    originalsecret: str = ""
    ticketid: str = ""

    def result(self) -> dict[str, str]:
        """The job's result: `{"stat": "ok", "photoid": …}` with only the fields Flickr gave."""
        fields = {k: v for k, v in vars(self).items() if v}
        return {"stat": "ok", **fields}


def parse_upload_answer(text: str) -> UploadAnswer | Failure:
    """Flickr's XML answer to an upload or replace: the answer, or the classified failure."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        return flickr_errors.bad_payload("XML with a document type declaration")
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DTDs (refused above); expat caps entity expansion
    except ET.ParseError:
        return flickr_errors.bad_payload("not XML")
    stat = root.get("stat")
    if root.tag != "rsp" or stat not in {"ok", "fail"}:
        return flickr_errors.bad_payload("no <rsp stat>")
    if stat == "fail":
        err = root.find("err")
        raw_code = err.get("code", "0") if err is not None else "0"
        code = int(raw_code) if raw_code.strip().isdigit() else 0
        message = err.get("msg", "") if err is not None else ""
        duplicate = (root.findtext("duplicate_photo_id") or "").strip()
        return flickr_errors.from_upload_envelope(code, message, duplicate)
    photo = root.find("photoid")
    ticket = (root.findtext("ticketid") or "").strip()
    if photo is not None and (photo.text or "").strip():
        return UploadAnswer(
            (photo.text or "").strip(), photo.get("secret", ""), photo.get("originalsecret", ""), ticket
        )
    if ticket:
        return UploadAnswer(ticketid=ticket)
    return flickr_errors.bad_payload("neither photoid nor ticketid")


def _text(value: Any) -> str:
    if isinstance(value, dict):  # Flickr's JSON sometimes wraps scalars as {"_content": …}
        value = value.get("_content", "")
    return "" if value is None else str(value)


def ticket_state(body: dict[str, Any], ticket_id: str) -> tuple[int, str]:
    """(complete, photoid) of one ticket in a checkTickets JSON answer; complete -1 = invalid or absent."""
    tickets = (body.get("uploader") or {}).get("ticket") or []
    if isinstance(tickets, dict):
        tickets = [tickets]
    for ticket in tickets:
        if isinstance(ticket, dict) and _text(ticket.get("id")) == ticket_id:
            if _text(ticket.get("invalid")) == "1":
                return -1, ""
            complete = _text(ticket.get("complete"))
            return (int(complete) if complete.isdigit() else 0), _text(ticket.get("photoid"))
    return -1, ""


class BlobPayload(AsyncIterablePayload):
    """The photo streamed from the blob store, with its size known (so the body has a Content-Length)."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        super().__init__(chunks, content_type="application/octet-stream")
        self._size = size


class Uploader:
    """Runs one upload or replace job against Flickr's upload endpoints."""

    def __init__(
        self, flickr: FlickrClient, blobs: BlobStore, ticket_timeout_s: float, timeout_s: float
    ) -> None:
        self._flickr = flickr
        self._blobs = blobs
        self._ticket_timeout_s = ticket_timeout_s
        # No total timeout: a 100 MiB photo takes long; each read and the connect have their own limit.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self.poll_initial_s = TICKET_POLL_INITIAL_S

    async def run(self, entry: JobEntry, token: TokenRecord) -> Success | Failure:
        """Post the photo, then follow its ticket if Flickr answered one."""
        try:
            info = await self._blobs.info(entry.blob_id)
        except PyMongoError as exc:
            return Failure(BLOB_UNAVAILABLE, f"blob store unavailable ({type(exc).__name__})", True)
        if info is None:
            return flickr_errors.blob_missing(entry.blob_id)
        started = time.perf_counter()
        with telemetry.span(telemetry.SPAN_FLICKR_CALL, kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute(telemetry.ATTR_METHOD, entry.method)
            span.set_attribute(telemetry.ATTR_TARGET, entry.target)
            outcome = await self._post(entry, token, info.size)
            if isinstance(outcome, Failure):
                span.set_attribute(telemetry.ATTR_FLICKR_CODE, outcome.flickr_code)
                span.set_status(trace.StatusCode.ERROR, outcome.code)
        metrics.FLICKR_SECONDS.observe(time.perf_counter() - started)
        metrics.FLICKR_CALLS.labels(result="ok" if isinstance(outcome, UploadAnswer) else outcome.code).inc()
        if isinstance(outcome, Failure):
            return outcome
        if outcome.ticketid and not outcome.photoid:
            return await self._follow(outcome.ticketid, token)
        return Success(outcome.result())

    async def _post(self, entry: JobEntry, token: TokenRecord, size: int) -> UploadAnswer | Failure:
        endpoints = self._flickr.endpoints
        url = endpoints.replace if entry.target == "replace" else endpoints.upload
        creds = oauth1.Credentials(
            endpoints.consumer_key, endpoints.consumer_secret, token.oauth_token, token.oauth_token_secret
        )
        # flickrapi sends api_key too (signed); `photo` is never part of the signature.
        fields = {**entry.params, "api_key": endpoints.consumer_key}
        authorization = oauth1.authorization_header("POST", url, fields, creds)
        with aiohttp.MultipartWriter("form-data") as body:
            for name, value in fields.items():
                body.append(value).set_content_disposition("form-data", name=name)
            photo = body.append_payload(BlobPayload(self._blobs.read(entry.blob_id), size))
            photo.set_content_disposition("form-data", name="photo", filename="photo")
            try:
                with http_span("POST", url) as (span, headers):
                    async with self._flickr.session.post(
                        url,
                        data=body,
                        headers={**headers, "Authorization": authorization},
                        timeout=self._timeout,
                        allow_redirects=False,
                    ) as resp:
                        text = await resp.text()
                        status = resp.status
                        span.set_attribute(telemetry.ATTR_HTTP_STATUS, status)
            except FileNotFoundError:
                return flickr_errors.blob_missing(entry.blob_id)
            except PyMongoError as exc:
                return Failure(BLOB_UNAVAILABLE, f"blob store failed mid-upload ({type(exc).__name__})", True)
            except (TimeoutError, aiohttp.ClientError) as exc:
                return flickr_errors.from_transport(exc)
        if status != 200:
            return flickr_errors.from_http(status, text)
        return parse_upload_answer(text)

    async def _follow(self, ticket_id: str, token: TokenRecord) -> Success | Failure:
        """Ask checkTickets, backing off, until the ticket completes, fails or the timeout passes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = self.poll_initial_s
        while True:
            outcome = await self._flickr.call_rest(CHECK_TICKETS, {"tickets": ticket_id}, token)
            if isinstance(outcome, Success):
                complete, photo_id = ticket_state(outcome.body, ticket_id)
                if complete == 1 and photo_id:
                    return Success(UploadAnswer(photoid=photo_id, ticketid=ticket_id).result())
                if complete in {-1, 2}:
                    return flickr_errors.ticket_failed(ticket_id)
            elif not outcome.retryable:
                return outcome
            # Pending, or a transient checkTickets failure: the upload itself already happened.
            waited = loop.time() - started
            if waited + delay > self._ticket_timeout_s:
                return flickr_errors.ticket_timeout(ticket_id, waited)
            await asyncio.sleep(delay)
            delay = min(delay * 2, TICKET_POLL_MAX_S)
