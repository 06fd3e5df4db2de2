"""Seeding the demo user (the sandbox's demo token, encrypted, for a FlickrHub user id) and demo API keys."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from common import redisio
from common.apikeys import ALL_USERS, ApiKeyStore
from common.mongo import Mongo
from common.settings import Settings
from common.tokens import TokenRecord, TokenStore, token_id_hash
from common.vault import LocalKeyProvider, Vault
from sandbox import state as sandbox_state

DEMO_USER = "demo-user"


async def seed_demo_token(
    settings: Settings, user_id: str = DEMO_USER, *, distinct: bool = False
) -> TokenRecord:
    """Store the sandbox's demo token for `user_id`.

    With `distinct`, the token id also depends on the user id: tests give several
    users the sandbox's one demo token and still want one queue per user, as
    they would have with real tokens.
    """
    oauth_token = sandbox_state.DEMO_TOKEN
    record = TokenRecord(
        user_id=user_id,
        token_id_hash=token_id_hash(f"{oauth_token}:{user_id}" if distinct else oauth_token),
        oauth_token=oauth_token,
        oauth_token_secret=sandbox_state.DEMO_TOKEN_SECRET,
        user_nsid=sandbox_state.DEMO_USER_NSID,
        username=sandbox_state.DEMO_USERNAME,
        perms=sandbox_state.DEMO_PERMS,
    )
    mongo = Mongo.from_settings(settings)
    try:
        await mongo.ensure_indexes()
        await TokenStore(mongo.tokens, Vault(LocalKeyProvider.from_settings(settings))).put(record)
    finally:
        await mongo.close()
    return record


DEMO_CLIENT_KEY_ID = "democlient"
DEMO_ADMIN_KEY_ID = "demoadmin"
ADMIN_RATE_PER_MIN = 1_000_000


@dataclass(frozen=True)
class DemoKeys:
    """The API keys `make run` and the test stacks seed: a client bound to the demo user, an admin."""

    client_key: str
    client_key_id: str
    client_signing_secret: str
    admin_key: str
    admin_key_id: str


async def seed_api_keys(settings: Settings, user_ids: Sequence[str] = (DEMO_USER,)) -> DemoKeys:
    """(Re)create the demo client and admin keys with fresh secrets (the old ones stop working)."""
    mongo = Mongo.from_settings(settings)
    redis = redisio.client(settings.redis_url)
    try:
        await mongo.ensure_indexes()
        vault = Vault(LocalKeyProvider.from_settings(settings))
        store = ApiKeyStore.from_settings(mongo.api_keys, vault, settings, redis=redis)
        ids = [DEMO_CLIENT_KEY_ID, DEMO_ADMIN_KEY_ID]
        replaced = (await mongo.api_keys.delete_many({"key_id": {"$in": ids}})).deleted_count
        client, admin = await asyncio.gather(
            store.create("demo client", list(user_ids), key_id=DEMO_CLIENT_KEY_ID),
            # An internal operator key: a limit high enough for the load driver and the test suite.
            store.create(
                "demo admin",
                [ALL_USERS],
                admin=True,
                rate_limit_per_min=ADMIN_RATE_PER_MIN,
                key_id=DEMO_ADMIN_KEY_ID,
            ),
        )
        # A running gateway may hold the old secrets' checks: void them there (both keys' leases are
        # waited out together). Keys seeded for the first time have no old secret anyone could hold.
        if replaced:
            await asyncio.gather(*(store.bump_epoch(k) for k in ids))
    finally:
        await mongo.close()
        await redis.aclose()
    return DemoKeys(
        client.api_key, DEMO_CLIENT_KEY_ID, client.signing_secret, admin.api_key, DEMO_ADMIN_KEY_ID
    )
