"""A lean pipelined RESP2 connection for the mover's rounds.

redis-py's asyncio pipeline costs ~150-200 µs of CPU for a round trip carrying one command,
and its reply parser awaits the socket once per element: a stream entry of fifteen fields
costs ~100 µs to parse. A raw asyncio round trip costs ~15 µs. The mover's rounds are a
couple of pipelines of plain commands whose replies it reads itself, so they go over this
connection: commands are packed in one buffer, and every reply is parsed from the bytes
received, without an await per element. Replies come back raw (RESP2 shapes, strings
decoded as UTF-8); an error reply comes back as the redis-py exception it would raise, in
its place, like `execute(raise_on_error=False)`.

A failed connection (refused, cut, timed out) raises redis-py's ConnectionError or
TimeoutError and is opened again by the next call. `redis://`, `rediss://` and `unix://`
URLs are understood, with their username, password and database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | int | float | bytes]

_READ = 1 << 17


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


_INCOMPLETE = _Incomplete()


def pack(commands: Sequence[Command]) -> bytes:
    """Commands as one RESP buffer."""
    out: list[bytes] = []
    add = out.append
    for command in commands:
        add(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, int) and not isinstance(arg, bool):
                data = b"%d" % arg
            elif isinstance(arg, float):
                data = repr(arg).encode()
            else:
                raise DataError(f"cannot send {type(arg).__name__} to Redis")
            add(b"$%d\r\n" % len(data))
            add(data)
            add(b"\r\n")
    return b"".join(out)


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One reply starting at `pos`: (value, where the next one starts); _Incomplete if cut short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _INCOMPLETE
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if stop + 2 > len(buf):
            raise _INCOMPLETE
        return buf[start:stop].decode(), stop + 2
    if kind == 42:  # * array
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(size):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1 : end].decode(), end + 2
    if kind == 45:  # - error: the exception redis-py would raise (NOSCRIPT, NOGROUP in its message, ...)
        return BaseParser.parse_error(buf[pos + 1 : end].decode()), end + 2  # type: ignore[no-untyped-call]
    raise InvalidResponse(f"protocol error: {bytes(buf[pos : pos + 20])!r}")


class Wire:
    """One connection that runs pipelines; not for concurrent use (the mover's rounds are sequential)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._ssl = options.get("connection_class") is SSLConnection
        self._hello: list[Command] = []
        if options.get("password") is not None:
            user = options.get("username")
            self._hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self._hello.append(("SELECT", int(options["db"])))
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
                    await self._connect()
                assert self._writer is not None
                self._writer.write(data)
                return await self._replies(len(commands))
        except TimeoutError as exc:
            self.close()
            raise RedisTimeoutError("timed out waiting for Redis") from exc
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise RedisConnectionError(f"connection to Redis lost: {exc}") from exc
        except InvalidResponse:
            self.close()
            raise

    async def _connect(self) -> None:
        if self._path:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self._path))
        else:
            context = ssl.create_default_context() if self._ssl else None
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=context)
        self._buf = b""
        if self._hello:
            self._writer.write(pack(self._hello))
            for reply in await self._replies(len(self._hello)):
                if isinstance(reply, ResponseError):
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")

    async def _replies(self, count: int) -> list[Any]:
        assert self._reader is not None
        replies: list[Any] = []
        buf, pos = self._buf, 0
        while len(replies) < count:
            try:
                value, pos = parse(buf, pos)
            except _Incomplete:
                chunk = await self._reader.read(_READ)
                if not chunk:
                    raise EOFError("Redis closed the connection") from None
                buf, pos = buf[pos:] + chunk, 0
                continue
            replies.append(value)
        self._buf = buf[pos:]
        return replies

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
        self._buf = b""
