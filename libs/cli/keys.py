"""`flickrhub keys …`: API key management over gRPC (admin key), and the first admin key via MongoDB.

    flickrhub keys create NAME --user-id U [--user-id U2] [--admin] [--ip CIDR] [--rate N]
                               [--read N] [--write N] [--upload N]
    flickrhub keys list
    flickrhub keys rotate KEY_ID
    flickrhub keys revoke KEY_ID
    flickrhub keys bootstrap-admin [--name NAME]     (no key exists yet: writes MongoDB directly)

Secrets are printed once, on create, rotate and bootstrap-admin; nothing stores them.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TextIO

from common.apikeys import ALL_USERS, ApiKeyStore, IssuedKey
from common.mongo import Mongo
from common.settings import Settings
from common.vault import LocalKeyProvider, Vault
from flickrhub.v1 import keys_pb2, keys_pb2_grpc

CALL_TIMEOUT_S = 30.0
PAGE_SIZE = 500


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `keys` command and its actions."""
    keys = commands.add_parser("keys", help="API keys clients authenticate with (admin key needed)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints its secrets once")
    create.add_argument("name")
    create.add_argument("--user-id", action="append", default=[], dest="user_ids", help="repeatable")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--ip", action="append", default=[], dest="ips", help="allowed CIDR (repeatable)")
    create.add_argument("--rate", type=int, default=0, help="requests per minute (0 = default 1000)")
    for name in ("read", "write", "upload"):
        create.add_argument(f"--{name}", type=int, default=0, help=f"per-minute limit of {name} calls")
    actions.add_parser("list", help="list keys (never their secrets)")
    for action in ("rotate", "revoke"):
        sub = actions.add_parser(action, help=f"{action} a key")
        sub.add_argument("key_id")
    boot = actions.add_parser("bootstrap-admin", help="create an admin key directly in MongoDB")
    boot.add_argument("--name", default="bootstrap admin")


def _print_secret(secret: keys_pb2.ApiKeySecret, out: TextIO) -> None:
    print(f"key_id:         {secret.key.key_id}", file=out)
    print(f"api_key:        {secret.api_key}", file=out)
    print(f"signing_secret: {secret.signing_secret}", file=out)
    print("Store both now: FlickrHub keeps only a hash and cannot show them again.", file=out)


def run(args: argparse.Namespace, stub: keys_pb2_grpc.ApiKeyServiceStub, out: TextIO) -> None:
    """One `keys` action over gRPC."""
    if args.action == "create":
        request = keys_pb2.CreateApiKeyRequest(
            name=args.name,
            user_ids=args.user_ids,
            admin=args.admin,
            ip_allowlist=args.ips,
            rate_limit_per_min=args.rate,
            class_limits=keys_pb2.ClassLimits(read=args.read, write=args.write, upload=args.upload),
        )
        _print_secret(stub.CreateApiKey(request, timeout=CALL_TIMEOUT_S), out)
    elif args.action == "rotate":
        _print_secret(
            stub.RotateApiKey(keys_pb2.RotateApiKeyRequest(key_id=args.key_id), timeout=CALL_TIMEOUT_S), out
        )
    elif args.action == "revoke":
        key = stub.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=args.key_id), timeout=CALL_TIMEOUT_S)
        print(f"revoked {key.key_id} ({key.name})", file=out)
    else:
        _list(stub, out)


def _list(stub: keys_pb2_grpc.ApiKeyServiceStub, out: TextIO) -> None:
    rows = [("KEY_ID", "NAME", "USER_IDS", "ADMIN", "RATE/MIN", "REVOKED", "LAST_USED")]
    page_token = ""
    while True:
        page = stub.ListApiKeys(
            keys_pb2.ListApiKeysRequest(page_size=PAGE_SIZE, page_token=page_token), timeout=CALL_TIMEOUT_S
        )
        for k in page.keys:
            used = (
                k.last_used_at.ToDatetime().strftime("%Y-%m-%d %H:%M") if k.HasField("last_used_at") else ""
            )
            rows.append(
                (
                    k.key_id,
                    k.name,
                    ",".join(k.user_ids),
                    "yes" if k.admin else "no",
                    str(k.rate_limit_per_min),
                    "yes" if k.revoked else "no",
                    used,
                )
            )
        page_token = page.next_page_token
        if not page_token:
            break
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(rows) - 1} key(s)", file=out)


async def _bootstrap(settings: Settings, name: str) -> IssuedKey:
    mongo = Mongo.from_settings(settings)
    try:
        await mongo.ensure_indexes()
        vault = Vault(LocalKeyProvider.from_settings(settings))
        store = ApiKeyStore.from_settings(mongo.api_keys, vault, settings)
        return await store.create(name, [ALL_USERS], admin=True)
    finally:
        await mongo.close()


def bootstrap_admin(settings: Settings, name: str, out: TextIO) -> None:
    """Create an admin key in MongoDB (MONGO_URL, VAULT_*): the way in before any key exists."""
    issued = asyncio.run(_bootstrap(settings, name))
    print(f"key_id:         {issued.record.key_id}", file=out)
    print(f"api_key:        {issued.api_key}", file=out)
    print(f"signing_secret: {issued.signing_secret}", file=out)
    print("Store both now: FlickrHub keeps only a hash and cannot show them again.", file=out)
