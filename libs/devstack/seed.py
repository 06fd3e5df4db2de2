"""Seeding the demo user: the sandbox's demo token stored (encrypted) for a FlickrHub user id."""

from __future__ import annotations

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
    mongo = Mongo.connect(settings.mongo_url, settings.mongo_db)
    try:
        await mongo.ensure_indexes()
        await TokenStore(mongo.tokens, Vault(LocalKeyProvider.from_settings(settings))).put(record)
    finally:
        await mongo.close()
    return record
