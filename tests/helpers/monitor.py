"""Every command a real Redis runs, the commands inside its Lua scripts included (MONITOR).

MONITOR lists a script's own commands (client `lua`) right after the EVAL or EVALSHA that ran
them, so each script call can be checked against the keys it declared: on Redis Cluster a script
may only touch the keys it was given in KEYS.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common import redisio

SCRIPT_CALLS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}
# `+<unix time> [<db> <client address, or lua>] "arg" "arg" ...`
_LINE = re.compile(rb"^\+\d+\.\d+ \[\d+ ([^\]]*)\] (.*)$")
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}


@dataclass(frozen=True)
class Seen:
    """One command the server ran: who sent it (`lua` for a script's own) and its arguments."""

    client: bytes
    args: list[bytes]


@dataclass
class ScriptCall:
    """A script call (EVAL/EVALSHA/FCALL), the keys it declared and the commands it ran."""

    script: bytes  # the SHA, the body or the function name, as called
    declared: list[bytes]
    commands: list[list[bytes]] = field(default_factory=list)


class Monitor:
    """A MONITOR connection; `stop` returns what the server ran since it started."""

    def __init__(self, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._url = url
        self._reader = reader
        self._writer = writer

    async def stop(self, timeout_s: float = 10.0) -> list[Seen]:
        """Every command seen until a marker sent now comes back (so nothing sent before is missed)."""
        marker = f"monitor-end-{uuid.uuid4().hex}".encode()
        client = redisio.client(self._url, decode=False)
        try:
            await client.echo(marker)
        finally:
            await client.aclose()
        seen: list[Seen] = []
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await self._reader.readuntil(b"\r\n"))[:-2]
                match = _LINE.match(line)
                assert match is not None, f"not a MONITOR line: {line[:200]!r}"
                args = parse_args(match[2])
                if args and args[0].upper() == b"ECHO" and args[1:] == [marker]:
                    return seen
                seen.append(Seen(match[1], args))


@contextlib.asynccontextmanager
async def monitoring(url: str) -> AsyncIterator[Monitor]:
    """MONITOR on the Redis at `url` while the block runs."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=64 * 1024 * 1024)
    try:
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        assert await reader.readuntil(b"\r\n") == b"+OK\r\n"
        yield Monitor(url, reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


def parse_args(text: bytes) -> list[bytes]:
    """The quoted arguments of a MONITOR line (Redis escapes them as its `sdscatrepr` does)."""
    args: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i : i + 1] == b" ":
            i += 1
            continue
        assert text[i : i + 1] == b'"', f"unquoted argument at {i}: {text[i : i + 40]!r}"
        arg = bytearray()
        i += 1
        while text[i : i + 1] != b'"':
            if text[i : i + 1] != b"\\":
                arg += text[i : i + 1]
                i += 1
            elif text[i + 1] == ord("x"):
                arg.append(int(text[i + 2 : i + 4], 16))
                i += 4
            else:
                arg += _ESCAPES.get(text[i + 1], text[i + 1 : i + 2])
                i += 2
        args.append(bytes(arg))
        i += 1
    return args


def script_calls(seen: list[Seen]) -> list[ScriptCall]:
    """The script calls among `seen`, each with the commands it ran (a script's command outside one fails)."""
    calls: list[ScriptCall] = []
    current: ScriptCall | None = None
    for s in seen:
        if s.client == b"lua":
            assert current is not None, f"a script's command after no script call: {s.args!r}"
            current.commands.append(s.args)
        elif s.args and s.args[0].upper() in SCRIPT_CALLS:
            numkeys = int(s.args[2])
            current = ScriptCall(s.args[1], s.args[3 : 3 + numkeys])
            calls.append(current)
        else:
            current = None
    return calls


async def keys_of(redis: redisio.Redis, command: list[bytes]) -> list[bytes]:
    """The keys a command names, as the server itself finds them (COMMAND INFO, COMMAND GETKEYS)."""
    name = command[0].decode().lower()
    info = await redis.execute_command("COMMAND", "INFO", name)  # type: ignore[no-untyped-call]
    if not info[name]["key_specifications"]:  # TIME and the like (GETKEYS refuses them)
        return []
    found = await redis.command_getkeys(*command)
    return [k if isinstance(k, bytes) else k.encode() for k in found]


async def undeclared(redis: redisio.Redis, calls: list[ScriptCall]) -> list[tuple[bytes, list[bytes], bytes]]:
    """(script, command, key) for every key a script's command touched that its call did not declare."""
    found = []
    for call in calls:
        for command in call.commands:
            found += [
                (call.script, command, k) for k in await keys_of(redis, command) if k not in call.declared
            ]
    return found
