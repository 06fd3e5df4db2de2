"""Online master-key rotation: re-encrypt every secret at rest under the current key version.

Runbook (no downtime): 1) deploy every service with both keys (`VAULT_MASTER_KEY=1:<old>,2:<new>`,
`VAULT_KEY_VERSION=1`); 2) switch `VAULT_KEY_VERSION=2` (new secrets use the new key, old ones
still decrypt); 3) run `python -m common.rotation` (re-encrypts what is left, in batches, while
everything keeps serving); 4) remove the old key once the report says nothing is left on it.
Each record is rewritten with a compare-and-set on its nonce, so a secret changed meanwhile (a
user re-authorizing) is never overwritten with a stale value. Every run writes an audit entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from common.mongo import API_KEYS, AUDIT_LOG, AUTH_REQUESTS, JOBS, TOKENS, Doc, Mongo
from common.settings import Settings
from common.vault import LocalKeyProvider, Vault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecretFields:
    """Where encrypted secrets live: a collection, its encrypted fields, their purpose and record id."""

    collection: str
    fields: tuple[str, ...]
    purpose: str
    record_id_field: str


# Every encrypted field FlickrHub stores; a module that adds one registers it here.
SECRETS: list[SecretFields] = [
    SecretFields(TOKENS, ("oauth_token", "oauth_token_secret"), "oauth-token", "user_id"),
    SecretFields(JOBS, ("callback_secret",), "callback-secret", "job_id"),
    SecretFields(AUTH_REQUESTS, ("secret",), "request-token-secret", "request_id_hash"),
    # API keys' HMAC signing secrets (common.apikeys.SIGNING_PURPOSE); their bearer secrets are bcrypt.
    SecretFields(API_KEYS, ("signing_secret",), "api-key-signing", "key_id"),
]


@dataclass
class RotationReport:
    """What one rotation run did."""

    key_version: int
    rotated: dict[str, int] = field(default_factory=dict)
    skipped_concurrent: int = 0
    left_on_old_keys: dict[str, int] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""


def _stale_query(spec: SecretFields, version: int) -> dict[str, Any]:
    return {"$or": [{f"{name}.v": {"$exists": True, "$ne": version}} for name in spec.fields]}


async def rotate(
    db: AsyncDatabase[Doc], vault: Vault, *, batch: int = 200, actor: str = "cli"
) -> RotationReport:
    """Re-encrypt every secret not on the current key version; returns (and audits) the report."""
    version = vault.current_version
    report = RotationReport(key_version=version, started_at=datetime.now(UTC).isoformat())
    for spec in SECRETS:
        collection = db[spec.collection]
        done = 0
        last_id: Any = None
        while True:
            query = _stale_query(spec, version)
            if last_id is not None:
                query = {"$and": [query, {"_id": {"$gt": last_id}}]}
            projection = {"_id": 1, spec.record_id_field: 1, **dict.fromkeys(spec.fields, 1)}
            docs = [d async for d in collection.find(query, projection).sort("_id", 1).limit(batch)]
            if not docs:
                break
            last_id = docs[-1]["_id"]
            for doc in docs:
                changed, guard = {}, {"_id": doc["_id"]}
                for name in spec.fields:
                    blob = doc.get(name)
                    if isinstance(blob, dict) and vault.needs_rotation(blob):
                        record_id = str(doc[spec.record_id_field])
                        changed[name] = vault.reencrypt(blob, purpose=spec.purpose, record_id=record_id)
                        guard[f"{name}.n"] = blob["n"]
                if not changed:
                    continue
                result = await collection.update_one(guard, {"$set": changed})
                if result.modified_count:
                    done += 1
                else:
                    report.skipped_concurrent += 1  # rewritten meanwhile, already under the current key
        report.rotated[spec.collection] = done
        report.left_on_old_keys[spec.collection] = await collection.count_documents(
            _stale_query(spec, version)
        )
    report.finished_at = datetime.now(UTC).isoformat()
    await db[AUDIT_LOG].insert_one(
        {
            "action": "vault.rotate",
            "actor": actor,
            "outcome": "ok",
            "created_at": datetime.now(UTC),
            **asdict(report),
        }
    )
    log.info("key rotation done", extra={"report": asdict(report)})
    return report


async def _main(batch: int) -> RotationReport:
    settings = Settings.from_env()
    mongo = Mongo.connect(settings.mongo_url, settings.mongo_db)
    try:
        return await rotate(mongo.db, Vault(LocalKeyProvider.from_settings(settings)), batch=batch)
    finally:
        await mongo.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m common.rotation`: rotate and print the report as JSON."""
    parser = argparse.ArgumentParser(prog="python -m common.rotation", description=__doc__)
    parser.add_argument("--batch", type=int, default=200)
    opts = parser.parse_args(argv)
    report = asyncio.run(_main(opts.batch))
    print(json.dumps(asdict(report), indent=2))
    return 0 if not any(report.left_on_old_keys.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
