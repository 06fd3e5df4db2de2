"""SubmitJobs' rules: up to 100 jobs accepted or refused as a whole.

All-or-nothing, in the order SubmitJob checks one job (gateway.acceptance runs it): every item
is validated (a bad one is named by its index, `jobs[3].method`); the key must act for every
user; backpressure admits the whole batch or none of it; then callback targets, tokens and
idempotency keys. Only then is anything written: the jobs go through the group commit like any
other, and when one of them fails the others are taken back and the keys and admission ids
released, so a refused batch leaves nothing behind. Items that are duplicates (their
idempotency key was used before with the same request, or by an earlier item of the batch)
answer the first job's id and add no job.

What is here: the checks (those without I/O first), how an item's fields are named, and
which idempotency key each item reserves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from common.errors import FieldViolation, InvalidArgument, NotFound
from common.tokens import TokenStore
from common.urlguard import UrlGuard
from flickrhub.v1 import jobs_pb2
from gateway import idempotency, validation

MAX_JOBS = 100
_PHOTO_TARGETS = (jobs_pb2.TARGET_UPLOAD, jobs_pb2.TARGET_REPLACE)


def violations(items: Sequence[jobs_pb2.SubmitJobRequest]) -> list[FieldViolation]:
    """Every problem of a batch that needs no I/O, each field named with its item's index."""
    if not items:
        return [FieldViolation("jobs", f"1 to {MAX_JOBS} jobs")]
    if len(items) > MAX_JOBS:
        return [FieldViolation("jobs", f"at most {MAX_JOBS} jobs per batch, got {len(items)}")]
    bad: list[FieldViolation] = []
    for i, item in enumerate(items):
        if item.target in _PHOTO_TARGETS:
            bad.append(FieldViolation(f"jobs[{i}].target", "uploads carry a photo: use UploadJob"))
        bad += of_item(i, validation.submit_violations(item))
    return bad


def of_item(index: int, found: Sequence[FieldViolation]) -> list[FieldViolation]:
    """Violations of one item's fields, named as fields of the batch (`jobs[3].callback_url`)."""
    return [FieldViolation(f"jobs[{index}].{v.field}", v.description) for v in found]


def refusal(bad: Sequence[FieldViolation]) -> InvalidArgument:
    """The INVALID_ARGUMENT refusing a batch, naming (the first ten of) its bad fields."""
    return InvalidArgument("invalid SubmitJobsRequest: " + "; ".join(v.field for v in bad[:10]), list(bad))


def claims(
    items: Sequence[jobs_pb2.SubmitJobRequest], tokens: Sequence[str], job_ids: Sequence[str], header_key: str
) -> list[tuple[int, idempotency.Claim]]:
    """(index, claim) of every item with an idempotency key: its own, else `<header>/<i>` from the batch's."""
    out = []
    for i, item in enumerate(items):
        key = item.idempotency_key or (f"{header_key}/{i}" if header_key else "")
        if key:
            digest = idempotency.fingerprint(item)
            field = f"jobs[{i}].idempotency_key"
            out.append((i, idempotency.Claim(tokens[i], key, job_ids[i], digest, field)))
    return out


async def check_callbacks(guard: UrlGuard, items: Sequence[jobs_pb2.SubmitJobRequest]) -> None:
    """Resolve and check every callback URL at once; INVALID_ARGUMENT naming each refused one."""
    results = await asyncio.gather(
        *(validation.check_callback_target(guard, item.callback_url) for item in items),
        return_exceptions=True,
    )
    bad: list[FieldViolation] = []
    for i, result in enumerate(results):
        if isinstance(result, InvalidArgument):
            bad += of_item(i, result.violations)
        elif isinstance(result, BaseException):
            raise result
    if bad:
        raise refusal(bad)


async def token_ids(tokens: TokenStore, items: Sequence[jobs_pb2.SubmitJobRequest]) -> list[str]:
    """Each item's token id; NOT_FOUND naming the items whose user has no Flickr token."""
    users = sorted({item.user_id for item in items})
    records = dict(zip(users, await asyncio.gather(*(tokens.get(u) for u in users)), strict=True))
    missing = [i for i, item in enumerate(items) if records[item.user_id] is None]
    if missing:
        named = ", ".join(f"jobs[{i}] ({items[i].user_id!r})" for i in missing[:10])
        raise NotFound(f"no Flickr token for the user of {named}", reason="TOKEN_NOT_FOUND")
    return [records[item.user_id].token_id_hash for item in items]  # type: ignore[union-attr]
