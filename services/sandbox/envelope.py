"""How the sandbox answers: Flickr's json / jsonp / rest (XML) envelopes, OAuth 401s, HTTP errors.

REST errors are HTTP 200 with stat=fail (docs/flickr-api.md §1.4); OAuth protocol problems
the envelope cannot express (nonce, timestamp, absent parameters) are HTTP 401
text/plain `oauth_problem=…`, as Flickr's OAuth endpoints answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import quote
from xml.etree import ElementTree as ET

from aiohttp import web

from sandbox.methods import FlickrFault

_CALLBACK = re.compile(r"[A-Za-z_$][\w$.]{0,63}")
_XML_DECLARATION = '<?xml version="1.0" encoding="utf-8" ?>\n'
TOO_MANY_REQUESTS_HTML = (
    "<html><body><h1>429 Too Many Requests</h1>\n"
    "You have sent too many requests in a given amount of time.\n</body></html>"
)


@dataclass(frozen=True)
class Envelope:
    """The response format a request asked for."""

    kind: Literal["json", "jsonp", "xml"]
    callback: str = "jsonFlickrApi"


XML = Envelope("xml")


def choose(params: dict[str, str]) -> Envelope:
    """The envelope for `format`/`nojsoncallback`/`jsoncallback`; code 111 for an unknown format."""
    fmt = params.get("format", "rest")
    if fmt == "rest":
        return XML
    if fmt != "json":
        raise FlickrFault(111, f'Format "{fmt}" not found')
    if params.get("nojsoncallback") == "1":
        return Envelope("json")
    callback = params.get("jsoncallback", "")
    # Only a plain JavaScript name is echoed into the script; anything else gets the default.
    return Envelope("jsonp", callback if _CALLBACK.fullmatch(callback) else "jsonFlickrApi")


def ok(envelope: Envelope, body: dict[str, Any]) -> web.Response:
    """A stat=ok answer carrying `body`."""
    return _render(envelope, {**body, "stat": "ok"})


def fail(envelope: Envelope, code: int, message: str) -> web.Response:
    """A stat=fail answer (HTTP 200) with a numeric code."""
    return _render(envelope, {"stat": "fail", "code": code, "message": message})


def oauth_problem(problem: str, **details: str) -> web.Response:
    """HTTP 401 text/plain `oauth_problem=…&…`, Flickr's form for OAuth protocol failures."""
    pairs = [("oauth_problem", problem), *details.items()]
    text = "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
    return web.Response(status=401, text=text, content_type="text/plain", charset="utf-8")


def http_error(status: int) -> web.Response:
    """An HTML error page: Flickr's own 429 body, or a short page for any other status."""
    if status == 429:
        return web.Response(status=429, text=TOO_MANY_REQUESTS_HTML, content_type="text/html")
    reason = _reason(status)
    html = f"<html><body><h1>{status} {reason}</h1>\nThe sandbox was told to fail.\n</body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _render(envelope: Envelope, doc: dict[str, Any]) -> web.Response:
    if envelope.kind == "json":
        return web.Response(text=json.dumps(doc), content_type="application/json")
    if envelope.kind == "jsonp":
        return web.Response(text=f"{envelope.callback}({json.dumps(doc)})", content_type="text/javascript")
    return web.Response(text=_XML_DECLARATION + to_xml(doc), content_type="text/xml")


def to_xml(doc: dict[str, Any]) -> str:
    """The XML form of a JSON-shaped document (Flickr's conversion rules, §1.3, in reverse)."""
    rsp = ET.Element("rsp", stat=str(doc["stat"]))
    if doc["stat"] == "fail":
        ET.SubElement(rsp, "err", code=str(doc["code"]), msg=str(doc["message"]))
    else:
        for name, value in doc.items():
            if name != "stat":
                _append(rsp, name, value)
    return ET.tostring(rsp, encoding="unicode")


def _append(parent: ET.Element, name: str, value: Any) -> None:
    # Lists repeat the element; dicts hold attributes (scalars), children (dicts, lists) and
    # "_content" (text); a bare scalar becomes an element's text.
    if isinstance(value, list):
        for item in value:
            _append(parent, name, item)
        return
    element = ET.SubElement(parent, name)
    if not isinstance(value, dict):
        element.text = _scalar(value)
        return
    for key, item in value.items():
        if key == "_content":
            element.text = _scalar(item)
        elif isinstance(item, dict | list):
            _append(element, key, item)
        else:
            element.set(key, _scalar(item))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)
