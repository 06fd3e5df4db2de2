"""The mover's rounds over one lean RESP connection (common.resp), not for concurrent use.

The mover's rounds are a couple of pipelines of plain commands whose replies it reads itself, one
at a time: they go over this connection. A failed connection (refused, cut, timed out) raises
redis-py's ConnectionError or TimeoutError and is opened again by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.resp import Command, Endpoint, _Incomplete, pack, parse, read_replies

__all__ = ["Command", "Wire", "_Incomplete", "pack", "parse"]


class Wire:
    """One connection that runs pipelines; not for concurrent use (the mover's rounds are sequential)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._endpoint = Endpoint(url)
        self._timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = b""

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in one write and return their replies, errors in place."""
        if not commands:
            return []
        data = pack(commands)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._writer is None:
                    self._reader, self._writer, self._buf = await self._endpoint.open()
                assert self._reader is not None
                assert self._writer is not None
                self._writer.write(data)
                replies, self._buf = await read_replies(self._reader, self._buf, len(commands))
                return replies
        except TimeoutError as exc:
            self.close()
            raise RedisTimeoutError("timed out waiting for Redis") from exc
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise RedisConnectionError(f"connection to Redis lost: {exc}") from exc
        except InvalidResponse:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
        self._buf = b""
