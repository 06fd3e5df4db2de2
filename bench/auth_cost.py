"""What authenticating a call costs the gateway: bcrypt vs the in-memory cache of verified keys.

Real Redis and SecantusDB (started here); the gateway's own Authenticator. Figures
are per call, in microseconds of wall time on an idle loop:

- `bcrypt_verify_us`: one bcrypt check of a key secret (cost factor 12);
- `uncached_bearer_us`: API_KEY_CACHE_S=0 — one indexed lookup by key id plus bcrypt;
- `cached_bearer_us`: within API_KEY_CACHE_S — a dict lookup and a SHA-256;
- `cached_hmac_us`: a signed call with a cached key — HMAC-SHA256 plus the nonce's SET NX.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from common import apikeys, redisio, signing
from common.apikeys import ApiKeyStore
from common.mongo import Mongo
from common.settings import Settings
from common.vault import LocalKeyProvider, Vault
from devstack.stores import mongo_url, redis_server, secantus
from gateway.authn import Authenticator, Request

METHOD = "/flickrhub.v1.JobService/GetJob"
PEER = "ipv4:127.0.0.1:5000"
BCRYPT_SAMPLES = 8


async def _measure(n: int, redis_url: str, mongo: str) -> dict[str, Any]:
    settings = Settings.from_env({}, redis_url=redis_url, mongo_url=mongo, mongo_db="bench_auth")
    db = Mongo.connect(settings.mongo_url, settings.mongo_db)
    redis = redisio.client(redis_url)
    try:
        await db.ensure_indexes()
        store = ApiKeyStore.from_settings(
            db.api_keys, Vault(LocalKeyProvider.from_settings(settings)), settings
        )
        issued = await store.create("bench", ["bench-user"])
        doc = await store.find(issued.record.key_id)
        assert doc is not None
        secret = issued.api_key.split("_", 2)[2]

        t0 = time.perf_counter()
        for _ in range(BCRYPT_SAMPLES):
            apikeys.check_secret(secret, doc["secret_hash"])
        bcrypt_us = (time.perf_counter() - t0) / BCRYPT_SAMPLES * 1e6

        def authenticator(cache_s: float) -> Authenticator:
            return Authenticator(
                store,
                redis,
                cache_s=cache_s,
                skew_s=300,
                trusted_proxies=settings.trusted_proxy_networks,
                bcrypt_concurrency=settings.api_key_bcrypt_concurrency,
            )

        bearer = Request(METHOD, {"authorization": f"Bearer {issued.api_key}"}, PEER, signing.EMPTY_SHA256)
        cold = authenticator(0)
        t0 = time.perf_counter()
        for _ in range(BCRYPT_SAMPLES):
            await cold.authenticate(bearer, "127.0.0.1", True)
        uncached_us = (time.perf_counter() - t0) / BCRYPT_SAMPLES * 1e6

        warm = authenticator(60)
        await warm.authenticate(bearer, "127.0.0.1", True)
        t0 = time.perf_counter()
        for _ in range(n):
            await warm.authenticate(bearer, "127.0.0.1", True)
        cached_us = (time.perf_counter() - t0) / n * 1e6

        body_hash = signing.EMPTY_SHA256
        signed = []
        for _ in range(n):
            headers = signing.sign_headers(issued.record.key_id, issued.signing_secret, "POST", METHOD)
            signed.append(Request(METHOD, headers, PEER, body_hash))
        t0 = time.perf_counter()
        for call in signed:
            await warm.authenticate(call, "127.0.0.1", True)
        hmac_us = (time.perf_counter() - t0) / n * 1e6
        await db.client.drop_database("bench_auth")
    finally:
        await redis.aclose()
        await db.close()
    return {
        "bcrypt_verify_us": round(bcrypt_us, 1),
        "uncached_bearer_us": round(uncached_us, 1),
        "cached_bearer_us": round(cached_us, 1),
        "cached_hmac_us": round(hmac_us, 1),
        "bcrypt_vs_cached": round(uncached_us / cached_us, 1),
        "bcrypt_checks_while_cached": warm.bcrypt_checks,
    }


def run(n: int) -> dict[str, Any]:
    """Start Redis and SecantusDB, measure, stop them."""
    with tempfile.TemporaryDirectory(prefix="flickrhub-bench-auth-") as tmp:
        redis = redis_server("queue", Path(tmp) / "redis").start()
        mongo = secantus(Path(tmp) / "mongo").start(timeout=60)
        try:
            return asyncio.run(_measure(n, f"redis://127.0.0.1:{redis.port}/0", mongo_url(mongo.port)))
        finally:
            mongo.stop()
            redis.stop()


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=2))
