"""RESP2 without redis-py's per-call machinery: a codec, and one connection shared by concurrent callers.

redis-py's asyncio client costs ~95 µs of CPU for a round trip carrying one EVAL and ~140 µs for a
pipeline of three commands here (its pool, a timeout per reply, a retry policy, observability
hooks, a parser that awaits the socket per element); the same round trips on a raw asyncio
connection cost ~50 and ~60 µs. The hot paths whose replies the caller reads itself (the mover's
rounds, mover.wire; the gateway's admission and commit; the worker's outcomes and
acknowledgements) go over such connections. Replies come back raw (RESP2 shapes, strings decoded
as UTF-8); an error reply comes back as the redis-py exception it would raise, in its place, like
a pipeline's `execute(raise_on_error=False)`. A failed connection raises redis-py's
ConnectionError or TimeoutError and is opened again by the next call.

`Multiplexed` is one connection for many concurrent callers: each call's commands are written in
one piece and, Redis answering in order, its replies are the next ones read. Nothing is retried:
a call in flight when the connection breaks fails (as a refused submission or an entry left
pending, which their callers already handle), and the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from redis._parsers.base import BaseParser
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse
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


async def run(pipe: Pipeline, wire: Multiplexed | None) -> list[Any]:
    """A redis-py pipeline's replies, errors in place: raw over `wire` when there is one, else by redis-py."""
    if wire is None:
        return list(await pipe.execute(raise_on_error=False))
    return await wire.send(pipe)


class Endpoint:
    """Where a `redis://`, `rediss://` or `unix://` URL points, and what a new connection must send first."""

    def __init__(self, url: str) -> None:
        options = parse_url(url)
        self.host = str(options.get("host", "localhost"))
        self.port = int(options.get("port", 6379))
        self.path = options.get("path")
        self.tls = options.get("connection_class") is SSLConnection
        self.hello: list[Command] = []
        if options.get("password") is not None:
            user = options.get("username")
            self.hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self.hello.append(("SELECT", int(options["db"])))

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A connection that said hello: its reader, writer, and what was read past the hello's replies."""
        if self.path:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
        else:
            context = ssl.create_default_context() if self.tls else None
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        rest = b""
        if self.hello:
            writer.write(pack(self.hello))
            replies, rest = await read_replies(reader, b"", len(self.hello))
            for reply in replies:
                if isinstance(reply, Exception):  # AUTH's refusal parses as redis-py's AuthenticationError
                    writer.close()
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")
        return reader, writer, rest


async def read_replies(reader: asyncio.StreamReader, buf: bytes, count: int) -> tuple[list[Any], bytes]:
    """`count` replies parsed from `buf` and then the socket; also what was read beyond them."""
    replies: list[Any] = []
    pos = 0
    while len(replies) < count:
        try:
            value, pos = parse(buf, pos)
        except _Incomplete:
            chunk = await reader.read(_READ)
            if not chunk:
                raise EOFError("Redis closed the connection") from None
            buf, pos = buf[pos:] + chunk, 0
            continue
        replies.append(value)
    return replies, buf[pos:]


class _Link:
    """One open connection of a Multiplexed: the calls waiting for replies, in the order they were sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
        self.writer = writer
        self.waiting: collections.deque[tuple[int, asyncio.Future[list[Any]]]] = collections.deque()
        self.broken: BaseException | None = None
        self.task = asyncio.create_task(self._read(reader, rest), name="resp-reader")

    async def _read(self, reader: asyncio.StreamReader, buf: bytes) -> None:
        pos = 0
        replies: list[Any] = []
        try:
            while True:
                while self.waiting:
                    count, future = self.waiting[0]
                    try:
                        while len(replies) < count:
                            value, pos = parse(buf, pos)
                            replies.append(value)
                    except _Incomplete:
                        break
                    self.waiting.popleft()
                    if not future.done():  # its caller may have given up (cancelled, timed out)
                        future.set_result(replies)
                    replies = []
                chunk = await reader.read(_READ)
                if not chunk:
                    raise EOFError("Redis closed the connection")
                buf, pos = buf[pos:] + chunk, 0
        except asyncio.CancelledError:
            self.fail(RedisConnectionError("connection to Redis closed"))
            raise
        except (OSError, EOFError, InvalidResponse) as exc:
            self.fail(RedisConnectionError(f"connection to Redis lost: {exc}"))

    def fail(self, exc: BaseException) -> None:
        """Break the link: every waiting call gets `exc`; the next call opens a new connection."""
        if self.broken is None:
            self.broken = exc
            with contextlib.suppress(Exception):
                self.writer.close()
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class Multiplexed:
    """One connection to Redis shared by concurrent callers (see the module doc)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._endpoint = Endpoint(url)
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self._opening = asyncio.Lock()

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in one write and return their replies, errors in place."""
        if not commands:
            return []
        data = pack(commands)
        link = self._link
        if link is None or link.broken is not None:
            link = await self._open()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        link.waiting.append((len(commands), future))
        link.writer.write(data)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await future
        except TimeoutError as exc:  # Redis stopped answering: the link is no good to anyone
            link.fail(RedisTimeoutError("timed out waiting for Redis"))
            raise RedisTimeoutError("timed out waiting for Redis") from exc

    async def send(self, pipe: Pipeline) -> list[Any]:
        """A redis-py pipeline's commands (built as usual, never executed by it), replies raw."""
        return await self.execute([args for args, _ in pipe.command_stack])

    async def _open(self) -> _Link:
        async with self._opening:
            if self._link is not None and self._link.broken is None:
                return self._link
            try:
                async with asyncio.timeout(self._timeout_s):
                    reader, writer, rest = await self._endpoint.open()
            except TimeoutError as exc:
                raise RedisTimeoutError("timed out connecting to Redis") from exc
            except (OSError, EOFError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            self._link = _Link(reader, writer, rest)
            return self._link

    async def close(self) -> None:
        """Close the connection; calls in flight fail."""
        link, self._link = self._link, None
        if link is not None:
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.task
            link.fail(RedisConnectionError("connection to Redis closed"))
