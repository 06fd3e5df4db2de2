"""Cache warming (CACHE_WARM_ENABLED, off by default): refetch popular reads shortly before they expire.

The cache service counts lookups per key and hands out popular entries that are
close to expiry, each claimed for one caller (CacheService.WarmCandidates). A
worker refetches them the way a job would: signed with the token that owns the
entry (looked up by its id, so a replaced or revoked token is never used), after
the breakers and out of the shared Flickr budget, and stores the fresh answer.

Bounded twice: one worker per interval holds a lock in the queue Redis, so
CACHE_WARM_MAX_PER_MIN caps the whole fleet's warming calls; and a refresh only
runs while the breakers are closed and the budget grants a call at once, so
warming never waits for budget that queued jobs need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from common import keys, redisio
from common.breaker import CLOSED
from common.flickr_errors import Failure
from common.flickr_guard import FlickrGuard
from common.flickr_methods import is_write
from common.settings import Settings
from common.tokens import TokenStore
from flickrhub.v1 import cache_pb2
from worker import metrics
from worker.cache_client import CacheClient
from worker.flickr import FlickrClient, Success

log = logging.getLogger(__name__)


class Warmer:
    """The background task that keeps popular cache entries fresh."""

    def __init__(
        self,
        settings: Settings,
        redis: redisio.Redis,
        cache: CacheClient,
        tokens: TokenStore,
        flickr: FlickrClient,
        guard: FlickrGuard,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._cache = cache
        self._tokens = tokens
        self._flickr = flickr
        self._guard = guard
        self._worker_id = worker_id
        self._interval = settings.cache_warm_interval_s
        # This interval's share of the per-minute cap (at least one call).
        self._per_tick = max(1, round(settings.cache_warm_max_per_min * self._interval / 60))
        # A claim outlives one refresh (a Flickr call and a Put), so two workers never refetch one entry.
        self._claim_s = int(settings.flickr_timeout_s + settings.cache_timeout_s) + 5
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run ticks in the background until stop()."""
        self._task = asyncio.create_task(self._run(), name="cache-warmer")

    async def stop(self) -> None:
        """Cancel the task (a refresh cut short only leaves its entry to expire)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.tick()
            except (RedisError, PyMongoError) as exc:
                # A store hiccup costs one tick: the entries it would have refreshed just expire.
                log.warning("cache warming tick skipped: %s", type(exc).__name__)

    async def tick(self) -> int:
        """One pass: refetch up to this interval's share of popular entries near expiry; how many."""
        # Just under one interval, so the next tick (on any worker) finds it free.
        hold_ms = max(1, int(self._interval * 900))
        if not await self._redis.set(keys.CACHE_WARM_LOCK, self._worker_id, nx=True, px=hold_ms):
            return 0
        settings = self._settings
        candidates = await self._cache.warm_candidates(
            settings.cache_warm_top,
            settings.cache_warm_min_requests,
            settings.cache_warm_before_s,
            self._per_tick,
            self._claim_s,
        )
        refreshed = 0
        for candidate in candidates:
            outcome = await self._refresh(candidate.key)
            metrics.CACHE_WARMED.labels(outcome=outcome).inc()
            if outcome == "stopped":
                break
            refreshed += outcome == "refreshed"
        return refreshed

    async def _refresh(self, key: cache_pb2.CacheKey) -> str:
        """refreshed, skipped (nothing to do for this key) or stopped (no budget or a breaker is open)."""
        if is_write(key.method):
            return "skipped"
        token = await self._tokens.get_by_hash(key.token_id_hash)
        if token is None:
            return "skipped"
        if (await self._guard.may_move()).state != CLOSED:
            return "stopped"
        if (await self._guard.budget.take(1)).granted == 0:
            return "stopped"
        params = dict(key.params)
        outcome = await self._flickr.call_rest(key.method, params, token)
        await self._guard.report(None if isinstance(outcome, Success) else outcome)
        if isinstance(outcome, Failure):
            log.info("cache warming call failed: %s", outcome.code)
            return "failed"
        await self._cache.put(key.method, params, key.token_id_hash, outcome.body)
        return "refreshed"
