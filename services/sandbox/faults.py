"""Planned faults (`sandbox.state.Fault`) acted out on a call: latency, a Flickr error, an HTTP
status, or a connection dropped without an answer.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

from aiohttp import web

from sandbox import envelope
from sandbox.methods import FlickrFault
from sandbox.state import Fault


async def apply(fault: Fault) -> web.Response | None:
    """Act out a planned fault; a response replaces the answer, None lets the call go on."""
    if fault.kind == "latency":
        await asyncio.sleep(fault.latency_ms / 1000)
        return None
    if fault.kind == "flickr_error":
        raise FlickrFault(fault.code, fault.message)
    return envelope.http_error(fault.status)


def drop(request: web.Request) -> NoReturn:
    """Close the connection: nothing more is written, the client sees it close without an answer."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError
