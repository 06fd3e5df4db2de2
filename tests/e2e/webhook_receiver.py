"""A real HTTP server that records the webhooks FlickrHub sends it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Delivery:
    """One POST as received."""

    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON body."""
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    """Collects deliveries; `fail_first` answers 503 to that many POSTs first; `delay_s` answers late."""

    fail_first: int = 0
    delay_s: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.deliveries.append(Delivery(dict(request.headers), body))
        self._arrived.set()
        return web.Response(status=204)

    async def start(self) -> Receiver:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def wait_for(self, job_id: str, timeout: float = 30.0) -> list[Delivery]:
        """Deliveries for `job_id`, waiting until at least one has arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [d for d in self.deliveries if d.payload.get("job_id") == job_id]
            if found:
                return found
            assert loop.time() < deadline, f"no webhook for {job_id}"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=max(0.01, deadline - loop.time()))

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
