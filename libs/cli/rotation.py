"""Online master-key rotation: re-encrypt every secret at rest under the current key version.

Runbook (no downtime): 1) deploy every service with both keys (`VAULT_MASTER_KEY=1:<old>,2:<new>`,
`VAULT_KEY_VERSION=1`); 2) switch `VAULT_KEY_VERSION=2` (new secrets use the new key, old ones
still decrypt); 3) run `python -m cli.rotation` (re-encrypts what is left, in batches, while
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
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from common import auditlog
from common.mongo import API_KEYS, AUTH_REQUESTS, JOBS, TOKENS, Doc, Mongo
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


# A query as rotation runs it: a filter and its sort (tests explain exactly these).
Query = tuple[dict[str, Any], list[tuple[str, int]]]


def version_query(name: str, after: int) -> Query:
    """The lowest key version above `after` that encrypts field `name` somewhere (versions start at 1).

    One range on the `<name>.v` index (mongo._key_version_index), which a `$gt` of 0 or more implies.
    Not a `$ne` on the current version, nor a top-level `$or` over the fields: SecantusDB scans both.
    """
    return {f"{name}.v": {"$gt": after}}, [(f"{name}.v", 1)]


def page_query(name: str, version: int, last_id: Any = None) -> Query:
    """The records of field `name` under key `version` after `last_id` (from the first when None), by `_id`.

    An equality then a range on the (`<name>.v`, `_id`) index: each page starts where the last ended,
    so a record that cannot be rewritten (a concurrent writer still on the old key) is passed, not re-read.
    """
    query: dict[str, Any] = {f"{name}.v": version}
    if last_id is not None:
        query["_id"] = {"$gt": last_id}
    return query, [("_id", 1)]


async def _stale_pages(
    collection: AsyncCollection[Doc], name: str, current: int, projection: dict[str, int], batch: int
) -> AsyncIterator[list[Doc]]:
    """Pages of the records whose field `name` is on a key version other than `current`.

    Each old version in turn (found by `version_query`, skipping the current one), walked in `_id`
    pages: the versions are few, so this reads only stale records and a handful of index probes.
    """
    after = 0
    while True:
        query, order = version_query(name, after)
        found = await collection.find_one(query, {f"{name}.v": 1}, sort=order)
        if found is None:
            return
        after = found[name]["v"]
        if after == current:
            continue
        last_id: Any = None
        while True:
            query, order = page_query(name, after, last_id)
            docs = [d async for d in collection.find(query, projection).sort(order).limit(batch)]
            if docs:
                yield docs
            if len(docs) < batch:
                break
            last_id = docs[-1]["_id"]


async def _count_stale(collection: AsyncCollection[Doc], spec: SecretFields, current: int, batch: int) -> int:
    """How many records still hold a secret on an old key: the same walk, by `_id`, counted once each."""
    ids: set[Any] = set()
    for name in spec.fields:
        async for docs in _stale_pages(collection, name, current, {"_id": 1}, batch):
            ids.update(doc["_id"] for doc in docs)
    return len(ids)


async def rotate(mongo: Mongo, vault: Vault, *, batch: int = 200, actor: str = "cli") -> RotationReport:
    """Re-encrypt every secret not on the current key version; returns (and audits) the report.

    Each rewrite goes through the collection's durable write concern (common.mongo): the report
    counts a record rotated only once it is journaled, so an old key retired after it stays unused.
    """
    version = vault.current_version
    report = RotationReport(key_version=version, started_at=datetime.now(UTC).isoformat())
    for spec in SECRETS:
        collection = mongo.collection(spec.collection)
        done = 0
        projection = {"_id": 1, spec.record_id_field: 1, **dict.fromkeys(spec.fields, 1)}
        # One walk per field; a record is rewritten whole (every stale field at once) where first found,
        # so a later field's walk no longer sees it.
        for stale_field in spec.fields:
            async for docs in _stale_pages(collection, stale_field, version, projection, batch):
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
                    # By _id and each nonce read (a secret changed meanwhile is never overwritten).
                    # SecantusDB scans the collection for this filter (its _id index answers `_id`
                    # alone); MongoDB uses the _id index.
                    result = await collection.update_one(guard, {"$set": changed})
                    if result.modified_count:
                        done += 1
                    else:
                        report.skipped_concurrent += 1  # rewritten meanwhile, already under the current key
        report.rotated[spec.collection] = done
        report.left_on_old_keys[spec.collection] = await _count_stale(collection, spec, version, batch)
    report.finished_at = datetime.now(UTC).isoformat()
    entry = {"action": "vault.rotate", "actor": actor, "outcome": "ok", "created_at": datetime.now(UTC)}
    await mongo.audit_log.insert_one(auditlog.bucket([{**entry, **asdict(report)}]))
    log.info("key rotation done", extra={"report": asdict(report)})
    return report


async def _main(batch: int) -> RotationReport:
    settings = Settings.from_env()
    mongo = Mongo.from_settings(settings)
    try:
        return await rotate(mongo, Vault(LocalKeyProvider.from_settings(settings)), batch=batch)
    finally:
        await mongo.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m cli.rotation`: rotate and print the report as JSON."""
    parser = argparse.ArgumentParser(prog="python -m cli.rotation", description=__doc__)
    parser.add_argument("--batch", type=int, default=200)
    opts = parser.parse_args(argv)
    report = asyncio.run(_main(opts.batch))
    print(json.dumps(asdict(report), indent=2))
    return 0 if not any(report.left_on_old_keys.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
