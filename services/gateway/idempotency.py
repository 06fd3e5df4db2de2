"""Idempotency keys: a resubmission within IDEMPOTENCY_TTL_S (24 hours) returns the first job.

A key is reserved in the queue Redis under the token's scope (`keys.idempotency`, the
key's digest) with `SET NX`, holding `<job id>:<fingerprint>`. The fingerprint is a hash
of the request without its key: method, params (a protobuf map serialised
deterministically, so in canonical key order), user, target, callback and the rest, so
the dedupe key as a whole is (token, key) + (method, canonical params, …). `SET NX` is
the race arbiter: of concurrent duplicates exactly one reserves, the others read its
job id. The same key with another fingerprint is refused with ALREADY_EXISTS (409).
A submission that fails after reserving releases the key, but only while it still
holds its own job id, so it can never free a key another submission owns.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from redis.exceptions import RedisError

from common import keys, redisio, resp
from common.errors import FieldViolation, FlickrHubError, Unavailable
from flickrhub.v1 import jobs_pb2

# A reservation that vanished between SET NX and GET (its holder failed and released it): try again.
_ATTEMPTS = 3


def fingerprint(request: jobs_pb2.SubmitJobRequest) -> str:
    """Hash of everything a request asks for except its idempotency key (field or metadata)."""
    unkeyed = jobs_pb2.SubmitJobRequest()
    unkeyed.CopyFrom(request)
    unkeyed.ClearField("idempotency_key")
    return hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()[:32]


def redis_key(token: str, idem_key: str) -> str:
    """Where the reservation of `idem_key` within `token`'s scope lives."""
    return keys.idempotency(token, hashlib.sha256(idem_key.encode()).hexdigest()[:32])


class KeyReused(FlickrHubError):
    """The key was used before with a different request."""

    def __init__(self, fields: Sequence[str] = ("idempotency_key",)) -> None:
        super().__init__(
            "idempotency key already used with a different request",
            "IDEMPOTENCY_KEY_REUSED",
            grpc.StatusCode.ALREADY_EXISTS,
            violations=[FieldViolation(f, "reused with a different payload") for f in fields],
        )


@dataclass(frozen=True)
class Claim:
    """One key to reserve for one new job."""

    token: str
    idem_key: str
    job_id: str
    fingerprint: str
    # The request field named when the key was used for another payload (`jobs[3].idempotency_key`).
    field: str = "idempotency_key"


class IdempotencyKeys:
    """Reserve, look up and release idempotency keys."""

    def __init__(self, redis: redisio.Redis, ttl_s: int, wire: resp.Multiplexed | None = None) -> None:
        """`ttl_s` (IDEMPOTENCY_TTL_S): how long a reserved key is held."""
        self._redis = redis
        self._ttl_s = ttl_s
        self._wire = wire  # the reservation's round trip goes over it when given (common.resp)

    async def reserve(self, claim: Claim) -> str | None:
        """Reserve the key for `claim.job_id`; the first job's id when the key was used before."""
        return (await self.reserve_many([claim]))[0]

    async def reserve_many(self, claims: Sequence[Claim]) -> list[str | None]:
        """Reserve every key in one round trip (a second only for keys already held).

        Per claim: None when reserved for its own job id, else the job id that holds the key.
        Raises KeyReused naming the field of every claim whose key is held for another payload;
        nothing is released here: the caller releases its claims (`release` frees only the
        keys that still hold their own job id).
        """
        if not claims:
            return []
        names = [redis_key(c.token, c.idem_key) for c in claims]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name, claim in zip(names, claims, strict=True):
                pipe.set(name, f"{claim.job_id}:{claim.fingerprint}", nx=True, ex=self._ttl_s)
            reserved = await resp.run(pipe, self._wire)
            for reply in reserved:
                if isinstance(reply, Exception):
                    raise reply
            out: list[str | None] = [None] * len(claims)
            pending = [i for i, ok in enumerate(reserved) if not ok]
            conflicts: list[int] = []
            for _ in range(_ATTEMPTS):
                if not pending:
                    break
                held = await self._get([names[i] for i in pending])
                retry: list[int] = []
                for i, value in zip(pending, held, strict=True):
                    first_id, _, first_print = str(value or "").partition(":")
                    if not first_id:
                        retry.append(i)  # released between our SET and GET: claim it afresh
                    elif first_print != claims[i].fingerprint:
                        conflicts.append(i)
                    else:
                        out[i] = first_id
                pending = []
                if retry:
                    again = self._redis.pipeline(transaction=False)
                    for i in retry:
                        value = f"{claims[i].job_id}:{claims[i].fingerprint}"
                        again.set(names[i], value, nx=True, ex=self._ttl_s)
                    pending = [i for i, ok in zip(retry, await again.execute(), strict=True) if not ok]
        except RedisError as exc:
            raise Unavailable("queue store unavailable; retry shortly") from exc
        if pending:
            raise Unavailable("idempotency key is changing hands; retry shortly")
        if conflicts:
            raise KeyReused([claims[i].field for i in conflicts])
        return out

    async def _get(self, names: Sequence[str]) -> list[str | None]:
        # A pipeline of GETs, not MGET: keys of different tokens live in different cluster slots.
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
        return list(await pipe.execute())

    async def release(self, claims: Sequence[Claim]) -> None:
        """Free each key still held for its own job id (a failed submission must not pin it)."""
        if not claims:
            return
        with contextlib.suppress(RedisError):
            names = [redis_key(c.token, c.idem_key) for c in claims]
            held = await self._get(names)
            mine = [
                name
                for name, value, claim in zip(names, held, claims, strict=True)
                if str(value or "").startswith(f"{claim.job_id}:")
            ]
            if mine:
                pipe = self._redis.pipeline(transaction=False)
                for name in mine:
                    pipe.delete(name)
                await pipe.execute()
