"""The `flickrhub` operator command: OAuth authorization and stored tokens, over gRPC to the gateway.

    flickrhub auth [--perms read|write|delete] [--user-id U]   authorize a Flickr user interactively
    flickrhub tokens list                                        stored tokens (never a secret)
    flickrhub tokens revoke USER_ID                              revoke a user's token
    flickrhub keys create|list|rotate|revoke|bootstrap-admin     API keys (see cli.keys)
    flickrhub recover [--dry-run] [--min-age S]                  re-enqueue lost jobs, drop orphan blobs
    flickrhub archive [--dir D] [--older-than-days N]            export old jobs (see cli.archive)
    flickrhub restore FILE [--keep-days N]                       bring archived jobs back

The gateway is GATEWAY_ADDR (or --gateway); calls present the API key FLICKRHUB_API_KEY
(or --api-key). Exit status: 0 done, 1 the gateway
refused or could not be reached (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import grpc
import zstandard
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from cli import archive, credentials, keys, recover, rotation
from common import recovery
from common.settings import Settings, SettingsError
from flickrhub.v1 import auth_pb2, auth_pb2_grpc, keys_pb2_grpc

# The exchange with Flickr happens inside CompleteAuthorization: allow it Flickr's own timeout and some.
CALL_TIMEOUT_S = 60.0
PAGE_SIZE = 500


class CliError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flickrhub", description="FlickrHub operator commands.")
    parser.add_argument("--gateway", help="gateway gRPC address host:port (default: GATEWAY_ADDR)")
    parser.add_argument("--api-key", default="", help="API key to present (default: FLICKRHUB_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)
    auth = commands.add_parser("auth", help="authorize FlickrHub to act for a Flickr user")
    auth.add_argument("--perms", choices=("read", "write", "delete"), default="write", help="default: write")
    auth.add_argument("--user-id", default="", help="re-authorize this existing FlickrHub user")
    tokens = commands.add_parser("tokens", help="stored Flickr tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list stored tokens (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a user's token")
    revoke.add_argument("user_id")
    vault = commands.add_parser("vault", help="the encryption keys of secrets at rest")
    vault_actions = vault.add_subparsers(dest="action", required=True)
    rotate = vault_actions.add_parser(
        "rotate", help="re-encrypt every secret under VAULT_KEY_VERSION (talks to MongoDB directly)"
    )
    rotate.add_argument("--batch", type=int, default=200)
    keys.add_parser(commands)
    recover.add_parser(commands)
    archive.add_parsers(commands)
    return parser


def run_auth(
    stub: auth_pb2_grpc.AuthServiceStub, perms: str, user_id: str, stdin: TextIO, out: TextIO
) -> None:
    """Start, show the authorize URL, read the verifier, complete, show the new user."""
    started = stub.StartAuthorization(
        auth_pb2.StartAuthorizationRequest(perms=perms, user_id=user_id), timeout=CALL_TIMEOUT_S
    )
    print("Open this URL in a browser and approve FlickrHub's access:", file=out)
    print(started.authorize_url, file=out)
    if started.mode == "callback":
        print("Flickr then redirects the browser to FlickrHub's callback, which completes it.", file=out)
        return
    print("Then paste the verifier Flickr shows (e.g. 123-456-789): ", end="", file=out, flush=True)
    verifier = stdin.readline().strip()
    if not verifier:
        raise CliError("no verifier given; the authorization was not completed")
    done = stub.CompleteAuthorization(
        auth_pb2.CompleteAuthorizationRequest(request_token=started.request_token, verifier=verifier),
        timeout=CALL_TIMEOUT_S,
    )
    print(file=out)
    for name in ("user_id", "user_nsid", "username", "perms"):
        print(f"{name}: {getattr(done, name)}", file=out)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def run_list(stub: auth_pb2_grpc.AuthServiceStub, out: TextIO) -> None:
    """Every stored token as a table: who, which perms, revoked or not; never a token or a secret."""
    rows: list[tuple[str, ...]] = [
        ("USER_ID", "USER_NSID", "USERNAME", "PERMS", "REVOKED", "KEY_VERSION", "UPDATED")
    ]
    page_token = ""
    while True:
        page = stub.ListTokens(
            auth_pb2.ListTokensRequest(page_size=PAGE_SIZE, page_token=page_token), timeout=CALL_TIMEOUT_S
        )
        for t in page.tokens:
            updated = (
                t.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if t.HasField("updated_at") else ""
            )
            rows.append(
                (
                    t.user_id,
                    t.user_nsid,
                    t.username,
                    t.perms,
                    "yes" if t.revoked else "no",
                    str(t.key_version),
                    updated,
                )
            )
        page_token = page.next_page_token
        if not page_token:
            break
    print(_table(rows), file=out)
    print(f"{len(rows) - 1} token(s)", file=out)


def run_revoke(stub: auth_pb2_grpc.AuthServiceStub, user_id: str, out: TextIO) -> None:
    """Revoke one user's token."""
    info = stub.RevokeToken(auth_pb2.RevokeTokenRequest(user_id=user_id), timeout=CALL_TIMEOUT_S)
    print(f"revoked {info.user_id} ({info.username or info.user_nsid})", file=out)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(argv)
    if args.command == "vault":
        # Rotation is an operator job against MongoDB with the master keys, not a gateway RPC.
        try:
            return rotation.main(["--batch", str(args.batch)])
        except SettingsError as exc:
            print(f"flickrhub: error: {exc}", file=stderr)
            return 1
    try:
        settings = Settings.from_env()
        if args.command == "archive":
            archive.run_archive(settings, args.dir, args.older_than_days, stdout)
            return 0
        if args.command == "restore":
            archive.run_restore(settings, args.file, args.keep_days, stdout)
            return 0
        if args.command == "recover":
            # An operator job on the stores themselves, like `vault rotate`: no gateway call.
            recover.run(settings, args.dry_run, args.min_age, stdout)
            return 0
        if args.command == "keys" and args.action == "bootstrap-admin":
            # No key exists yet to call the gateway with: write MongoDB directly, like `vault rotate`.
            keys.bootstrap_admin(settings, args.name, stdout)
            return 0
        target = args.gateway or settings.gateway_addr
        api_key = args.api_key or settings.flickrhub_api_key
        with credentials.sync_authenticated_channel(target, api_key) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            if args.command == "keys":
                keys.run(args, keys_pb2_grpc.ApiKeyServiceStub(channel), stdout)
            elif args.command == "auth":
                run_auth(stub, args.perms, args.user_id, stdin, stdout)
            elif args.action == "list":
                run_list(stub, stdout)
            else:
                run_revoke(stub, args.user_id, stdout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"flickrhub: error: {code.name if code else 'UNKNOWN'}: {details}", file=stderr)
        return 1
    except (CliError, SettingsError, recovery.SweepBusy) as exc:
        print(f"flickrhub: error: {exc}", file=stderr)
        return 1
    except (OSError, ValueError, zstandard.ZstdError) as exc:  # archive files
        print(f"flickrhub: error: {exc}", file=stderr)
        return 1
    except (RedisError, PyMongoError) as exc:
        print(f"flickrhub: error: store unavailable: {type(exc).__name__}: {exc}", file=stderr)
        return 1
    except KeyboardInterrupt:
        print("flickrhub: interrupted", file=stderr)
        return 130
    return 0
