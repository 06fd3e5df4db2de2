"""Flickr's upload and replace endpoints in the sandbox (`/services/upload/`, `/services/replace/`).

Multipart bodies are read as a stream (the photo is hashed as it arrives, never
kept); the OAuth signature is checked over every field except `photo`, with the
REST endpoint's own checks. Answers are always XML (docs/flickr-api.md §3):
`<photoid>` (replace adds `secret` and `originalsecret`), `<ticketid>` with
`async=1`, or `<rsp stat="fail"><err code msg/>` with the codes 2 no photo,
4 size zero, 5 unrecognised type (JPEG, PNG and GIF are known by their magic
bytes), 9 duplicate (with `dedup_check`), 1 replace of an unknown photo,
99 without write permission. Planned faults match the pseudo-methods
`flickr.photos.upload` and `flickr.photos.replace`.

Control: `GET /_sandbox/uploads` lists what arrived (photo id, title, size,
sha256); `POST /_sandbox/uploads/tickets {"delay_ms", "fail"}` sets how later
async tickets complete.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Final
from xml.etree import ElementTree as ET

from aiohttp import BodyPartReader, web

from sandbox import control, envelope, faults
from sandbox.checks import OAuthProblem, authorize_write
from sandbox.methods import FlickrFault
from sandbox.params import RestRequest, form_pairs, query_pairs, rest_request
from sandbox.state import CallRecord, SandboxState, Token
from sandbox.uploadbook import UploadRecord

log = logging.getLogger("sandbox")

# Pseudo-method names for the call log and planned faults.
UPLOAD_METHOD: Final = "flickr.photos.upload"
REPLACE_METHOD: Final = "flickr.photos.replace"
PATHS: Final = {"/services/upload/": UPLOAD_METHOD, "/services/replace/": REPLACE_METHOD}
PHOTO_FIELD: Final = "photo"
MAX_FIELD_BYTES: Final = 64 * 1024
_MAGIC: Final = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
_HEAD_BYTES: Final = 8


@dataclass
class Photo:
    """What arrived in the `photo` part: presence, size, SHA-256 and the first bytes (for the type)."""

    present: bool = False
    size: int = 0
    sha256: str = ""
    head: bytes = b""

    @property
    def kind(self) -> str | None:
        """jpeg, png or gif by the magic bytes; None when unrecognised."""
        return next((kind for magic, kind in _MAGIC if self.head.startswith(magic)), None)


class DuplicatePhoto(FlickrFault):
    """Code 9: the user already has this photo (answered with `<duplicate_photo_id>`)."""

    def __init__(self, photo_id: str) -> None:
        super().__init__(9, "Duplicate photo/video detected")
        self.photo_id = photo_id


async def read_upload(request: web.Request) -> tuple[RestRequest, Photo]:
    """The parameters (query, text parts, Authorization header) and the streamed photo's digest."""
    pairs = query_pairs(request)
    photo = Photo()
    if request.content_type == "multipart/form-data":
        photo = await _read_multipart(request, pairs)
    elif request.content_type == "application/x-www-form-urlencoded":
        pairs += await form_pairs(request)
    return rest_request(request, pairs), photo


async def _read_multipart(request: web.Request, pairs: list[tuple[str, str]]) -> Photo:
    """Append the text fields to `pairs` as they arrive; the `photo` part is hashed, never kept."""
    photo = Photo()
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # nested multipart: not something Flickr's form takes
        if part.name == PHOTO_FIELD:
            photo = await _hash_photo(part)
        elif part.filename is None and part.name:
            # Raw bytes decoded as UTF-8 (docs/flickr-api.md §6: the email default mangles non-ASCII).
            raw = await part.read_chunk(MAX_FIELD_BYTES + 1)
            if len(raw) > MAX_FIELD_BYTES:
                raise FlickrFault(3, f"General upload failure (field {part.name} too long)")
            pairs.append((part.name, raw.decode("utf-8")))
            await part.release()
        else:
            await part.release()
    return photo


async def _hash_photo(part: BodyPartReader) -> Photo:
    digest = hashlib.sha256()
    size, head = 0, b""
    while chunk := await part.read_chunk(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
        if len(head) < _HEAD_BYTES:
            head += chunk[: _HEAD_BYTES - len(head)]
    return Photo(True, size, digest.hexdigest(), head)


def _check_photo(photo: Photo) -> str:
    if not photo.present:
        raise FlickrFault(2, "No photo specified")
    if photo.size == 0:
        raise FlickrFault(4, "Filesize was zero")
    kind = photo.kind
    if kind is None:
        raise FlickrFault(5, "Filetype was not recognised")
    return kind


def _known_photo(state: SandboxState, photo_id: str) -> bool:
    if state.uploads.knows_photo(photo_id):
        return photo_id not in state.deleted_photos
    # The REST methods' rule: digits, not ending in 0, not deleted.
    return photo_id.isdigit() and not photo_id.endswith("0") and photo_id not in state.deleted_photos


def _secret(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]  # noqa: S324 - fake data, not security


def accept(method: str, state: SandboxState, req: RestRequest, photo: Photo, token: Token) -> dict[str, Any]:
    """Store the photo's record and answer Flickr's body (photoid or ticketid)."""
    kind = _check_photo(photo)
    if method == REPLACE_METHOD:
        photo_id, title = _replaced_photo(state, req.params)
    else:
        photo_id, title = _new_photo(state, req.params, photo, token)
    book = state.uploads
    ticket_id = ""
    if req.params.get("async") == "1":
        ticket_id = book.new_ticket(photo_id, state.clock()).ticket_id
    record = UploadRecord(
        kind="replace" if method == REPLACE_METHOD else "upload",
        photo_id=photo_id,
        title=title,
        size=photo.size,
        sha256=photo.sha256,
        content_type=kind,
        user_nsid=token.user_nsid,
        ticket_id=ticket_id,
        ts=state.clock(),
    )
    book.uploads.append(record)
    return _answer(method, photo_id, ticket_id, photo)


def _replaced_photo(state: SandboxState, params: dict[str, str]) -> tuple[str, str]:
    """The id and title of the photo a replace names (1 when unknown or deleted)."""
    photo_id = params.get("photo_id", "")
    if not _known_photo(state, photo_id):
        raise FlickrFault(1, "Photo not found")
    return photo_id, state.photo_meta.get(photo_id, {}).get("title", "")


def _new_photo(state: SandboxState, params: dict[str, str], photo: Photo, token: Token) -> tuple[str, str]:
    """A new photo's id and title, its title and description kept (9 for a duplicate with dedup_check)."""
    book = state.uploads
    if params.get("dedup_check") in {"1", "2"}:
        duplicate = book.duplicate_of(token.user_nsid, photo.sha256)
        if duplicate:
            raise DuplicatePhoto(duplicate)
    photo_id = book.new_photo_id()
    state.photo_meta[photo_id] = {k: params[k] for k in ("title", "description") if k in params}
    return photo_id, params.get("title", "")


def _answer(method: str, photo_id: str, ticket_id: str, photo: Photo) -> dict[str, Any]:
    """Flickr's answer body: the ticket of an async upload, else the photo id (a replace adds secrets)."""
    if ticket_id:
        return {"ticketid": {"_content": ticket_id}}
    if method == REPLACE_METHOD:
        secret = _secret(photo.sha256)
        return {"photoid": {"_content": photo_id, "secret": secret, "originalsecret": _secret(secret)}}
    return {"photoid": {"_content": photo_id}}


def _duplicate_xml(fault: DuplicatePhoto) -> web.Response:
    rsp = ET.Element("rsp", stat="fail")
    ET.SubElement(rsp, "err", code=str(fault.code), msg=fault.message)
    ET.SubElement(rsp, "duplicate_photo_id").text = fault.photo_id
    text = '<?xml version="1.0" encoding="utf-8" ?>\n' + ET.tostring(rsp, encoding="unicode")
    return web.Response(text=text, content_type="text/xml")


def _record(
    state: SandboxState,
    method: str,
    req: RestRequest,
    photo: Photo,
    response: web.Response | None,
    stat: str | None,
    code: int | None,
) -> None:
    params = {k: v for k, v in req.params.items() if k != "oauth_signature"}
    if photo.present:  # the call log never holds the bytes, only their size and digest
        params["photo_size"], params["photo_sha256"] = str(photo.size), photo.sha256
    status = response.status if response is not None else None
    token = req.params.get("oauth_token")
    state.record(CallRecord(method, params, status, stat, code, req.consumer_key, token, state.clock()))
    log.info("flickr upload", extra={"method": method, "http_status": status, "code": code})


async def _serve(request: web.Request, method: str) -> web.StreamResponse:
    state = request.app[control.STATE]
    req, photo = RestRequest(request.method, str(request.url), []), Photo()
    try:
        try:
            req, photo = await read_upload(request)
        except ValueError as exc:  # a malformed multipart body or a field that is not UTF-8
            raise FlickrFault(3, f"General upload failure ({type(exc).__name__})") from None
        fault = state.take_fault(method)
        if fault is not None and fault.kind == "drop":
            _record(state, method, req, photo, None, None, None)
            faults.drop(request)
        if fault is not None and (replaced := await faults.apply(fault)) is not None:
            _record(state, method, req, photo, replaced, None, None)
            return replaced
        token = authorize_write(state, req)
        body = accept(method, state, req, photo, token)
    except DuplicatePhoto as duplicate:
        refused = _duplicate_xml(duplicate)
        _record(state, method, req, photo, refused, "fail", duplicate.code)
        return refused
    except FlickrFault as error:
        failed = envelope.fail(envelope.XML, error.code, error.message)
        _record(state, method, req, photo, failed, "fail", error.code)
        return failed
    except OAuthProblem as problem:
        oauth_refused = envelope.oauth_problem(problem.problem, **problem.details)
        _record(state, method, req, photo, oauth_refused, None, None)
        return oauth_refused
    response = envelope.ok(envelope.XML, body)
    _record(state, method, req, photo, response, "ok", None)
    return response


async def upload(request: web.Request) -> web.StreamResponse:
    """POST /services/upload/."""
    return await _serve(request, UPLOAD_METHOD)


async def replace(request: web.Request) -> web.StreamResponse:
    """POST /services/replace/."""
    return await _serve(request, REPLACE_METHOD)


async def list_uploads(request: web.Request) -> web.Response:
    """GET /_sandbox/uploads → every photo that arrived, oldest first (no bytes)."""
    return web.json_response([u.public() for u in request.app[control.STATE].uploads.uploads])


async def set_tickets(request: web.Request) -> web.Response:
    """POST /_sandbox/uploads/tickets {"delay_ms"?: int, "fail"?: bool} → 200 with the new settings."""
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    book = request.app[control.STATE].uploads
    delay = body.get("delay_ms", int(book.ticket_delay_s * 1000))
    fail = body.get("fail", book.ticket_fail)
    if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0 or not isinstance(fail, bool):
        return web.json_response({"error": "delay_ms must be a non-negative int, fail a bool"}, status=400)
    book.ticket_delay_s, book.ticket_fail = delay / 1000, fail
    return web.json_response({"delay_ms": delay, "fail": fail})


def install(app: web.Application) -> None:
    """Add the upload endpoints and their control routes to the sandbox app."""
    for path, method in PATHS.items():
        handler = upload if method == UPLOAD_METHOD else replace
        app.router.add_post(path, handler)
        app.router.add_post(path.rstrip("/"), handler)
    app.router.add_get(f"{control.PREFIX}/uploads", list_uploads)
    app.router.add_post(f"{control.PREFIX}/uploads/tickets", set_tickets)
