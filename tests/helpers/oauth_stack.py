"""An in-process stack plus the REST edge, in OAuth out-of-band or callback mode."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from edge import app as edge_app
from flickrhub.v1 import auth_pb2_grpc
from tests.helpers.inproc import Stack, running_stack, stack_settings


@dataclass
class AuthStack:
    """A running stack, its edge's base URL and an HTTP client session."""

    stack: Stack
    edge: str
    http: aiohttp.ClientSession

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        """An AuthService stub on the gateway."""
        return auth_pb2_grpc.AuthServiceStub(self.stack.channel)


@contextlib.asynccontextmanager
async def auth_stack(
    redis_url: str, cache_redis_url: str, mongo_url: str, db: str, *, callback: bool = False, **overrides: Any
) -> AsyncIterator[AuthStack]:
    """Sandbox, services and edge; in callback mode Flickr redirects to this edge's /v1/auth/callback."""
    # The edge's socket is bound before the settings name its port (a port found free and bound
    # later could be taken in between by another process on this machine).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    edge_port = sock.getsockname()[1]
    if callback:
        overrides["flickr_oauth_callback_url"] = f"http://127.0.0.1:{edge_port}/v1/auth/callback"
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, db, **overrides)
    async with running_stack(settings, cache=False) as stack:
        runner = web.AppRunner(edge_app.create_app(stack.settings, stack.channel))
        await runner.setup()
        await web.SockSite(runner, sock).start()
        try:
            async with aiohttp.ClientSession() as http:
                yield AuthStack(stack, f"http://127.0.0.1:{edge_port}", http)
        finally:
            await runner.cleanup()
