"""The `flickrhub` operator command against a running stack and the Flickr sandbox.

`auth` runs as a real subprocess (its stdin gets the verifier, as an operator would
paste it); `tokens` is called through main(argv) in a thread.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from cli.main import main
from sandbox.state import DEMO_TOKEN
from tests.helpers.flickr_approve import decide
from tests.helpers.oauth_stack import AuthStack, auth_stack


@pytest_asyncio.fixture
async def s(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any
) -> AsyncIterator[AuthStack]:
    async with auth_stack(redis_url, cache_redis_url, mongo_url, mongo_db_name) as running:
        yield running


def _addr(s: AuthStack) -> str:
    return f"127.0.0.1:{s.stack.gateway.port}"


def _admin_key(s: AuthStack) -> str:
    assert s.stack.keys is not None
    return s.stack.keys.admin_key


async def _cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def _auth_subprocess(s: AuthStack, *extra: str) -> tuple[int, str, str]:
    """`flickrhub auth`, approving the URL it prints on the sandbox page and typing the verifier."""
    env = {**os.environ, "GATEWAY_ADDR": _addr(s), "FLICKRHUB_API_KEY": _admin_key(s)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "auth",
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    printed = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "flickrhub auth ended before printing the authorize URL"
        printed.append(line)
        if line.startswith("http"):
            break
    approval = await decide(s.http, line.strip())
    out, err = await asyncio.wait_for(proc.communicate(f"{approval.verifier}\n".encode()), 60)
    return proc.returncode or 0, "".join(printed) + out.decode(), err.decode()


def _fields(out: str) -> dict[str, str]:
    return dict(
        line.split(": ", 1)
        for line in out.splitlines()
        if line.count(": ") == 1 and " " not in line.split(":")[0]
    )


async def test_auth_prints_the_new_user_and_the_token_works(s: AuthStack) -> None:
    code, out, err = await _auth_subprocess(s, "--perms", "write")
    assert code == 0, err
    fields = _fields(out)
    assert fields["user_nsid"] == "10000001@N00"
    assert fields["username"] == "flickrhub-demo"
    assert fields["perms"] == "write"
    doc = await s.stack.mongo.tokens.find_one({"user_id": fields["user_id"]})
    assert doc is not None and doc["perms"] == "write"
    granted = [t for t in s.stack.sandbox.tokens.values() if t.token != DEMO_TOKEN]
    assert granted[-1].token_secret not in out and granted[-1].token not in out


async def test_auth_can_reauthorize_an_existing_user(s: AuthStack) -> None:
    code, out, _ = await _auth_subprocess(s, "--perms", "read")
    assert code == 0
    user_id = _fields(out)["user_id"]
    code, out, err = await _auth_subprocess(s, "--perms", "delete", "--user-id", user_id)
    assert code == 0, err
    assert _fields(out)["user_id"] == user_id
    assert _fields(out)["perms"] == "delete"


async def test_auth_without_a_verifier_fails_clearly(s: AuthStack) -> None:
    code, out, err = await _cli("--gateway", _addr(s), "--api-key", _admin_key(s), "auth", stdin="")
    assert code == 1
    assert "/services/oauth/authorize?oauth_token=" in out
    assert err == "flickrhub: error: no verifier given; the authorization was not completed\n"


async def test_tokens_list_and_revoke(s: AuthStack) -> None:
    code, out, _ = await _auth_subprocess(s, "--perms", "read")
    assert code == 0
    user_id = _fields(out)["user_id"]
    code, table, _ = await _cli("--gateway", _addr(s), "--api-key", _admin_key(s), "tokens", "list")
    assert code == 0
    header, row, count = table.splitlines()
    assert header.split() == [
        "USER_ID",
        "USER_NSID",
        "USERNAME",
        "PERMS",
        "REVOKED",
        "KEY_VERSION",
        "UPDATED",
    ]
    assert row.split()[:5] == [user_id, "10000001@N00", "flickrhub-demo", "read", "no"]
    assert count == "1 token(s)"
    for token in s.stack.sandbox.tokens.values():
        assert token.token not in table and token.token_secret not in table
    code, out, _ = await _cli("--gateway", _addr(s), "--api-key", _admin_key(s), "tokens", "revoke", user_id)
    assert (code, out) == (0, f"revoked {user_id} (flickrhub-demo)\n")
    code, table, _ = await _cli("--gateway", _addr(s), "--api-key", _admin_key(s), "tokens", "list")
    assert table.splitlines()[1].split()[4] == "yes"


async def test_gateway_errors_are_one_line_and_non_zero(s: AuthStack) -> None:
    code, out, err = await _cli(
        "--gateway", _addr(s), "--api-key", _admin_key(s), "tokens", "revoke", "no-such-user"
    )
    assert code == 1
    assert out == ""
    assert err == "flickrhub: error: NOT_FOUND: unknown user_id 'no-such-user'\n"
    code, _, err = await _cli("--gateway", "127.0.0.1:9", "tokens", "list")
    assert code == 1
    assert err.startswith("flickrhub: error: UNAVAILABLE: ")
    assert err.count("\n") == 1


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["auth", "--perms", "admin"], stderr=io.StringIO())
    assert exited.value.code == 2


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "flickrhub")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "usage: flickrhub" in result.stdout
