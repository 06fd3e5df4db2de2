"""The shared guards in front of Flickr: the API key's hourly budget and its two circuit breakers.

Movers ask before moving (budget, and whether Flickr or the key is paused);
workers report every answer (a 429 counts against the key's breaker, a 5xx,
timeout or connection error against the Flickr-wide one, anything Flickr
answered closes them) and check the Flickr-wide breaker before spending an
attempt on a call that would fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

from common import keys, redisio
from common.breaker import FLICKR_POLICY, KEY_POLICY, OPEN, Breaker, Decision
from common.budget import Budget
from common.flickr_errors import Failure
from common.groupcommit import Batcher
from common.settings import Settings

# A success closes the breakers at most this late; the successes of a window share one close (a few
# closes a second per replica, whatever its load, instead of one per answer).
SUCCESS_WINDOW_S = 0.05


class FlickrGuard:
    """Budget and breakers of the configured Flickr API key."""

    def __init__(self, redis: redisio.Redis, settings: Settings) -> None:
        key_hash = hashlib.sha256(settings.flickr_endpoints.consumer_key.encode()).hexdigest()[:16]
        self.budget = Budget(
            redis, keys.flickr_budget(key_hash), settings.flickr_budget_per_hour, settings.flickr_budget_burst
        )
        key_policy = replace(KEY_POLICY, open_ms=int(settings.breaker_key_open_s * 1000))
        flickr_policy = replace(
            FLICKR_POLICY,
            threshold=settings.breaker_flickr_threshold,
            open_ms=int(settings.breaker_flickr_open_s * 1000),
        )
        self.key_breaker = Breaker(redis, f"key:{key_hash}", key_policy)
        self.flickr_breaker = Breaker(redis, "flickr", flickr_policy)
        self._paused_cache: tuple[float, int] = (0.0, 0)
        # Answers close the breakers off the job's path: the answers of SUCCESS_WINDOW_S share one close
        # (closing is idempotent, and each answer is still followed by a close that starts after it).
        self._successes: Batcher[None, None] = Batcher(
            self._close_both, window_s=SUCCESS_WINDOW_S, max_in_flight=1
        )

    async def _close_both(self, answers: list[None]) -> list[None]:
        await asyncio.gather(self.key_breaker.success(), self.flickr_breaker.success())
        return [None] * len(answers)

    async def may_move(self) -> Decision:
        """The most restrictive breaker decision: open (pause), probe (move one) or closed."""
        flickr = await self.flickr_breaker.allow()
        if flickr.state == OPEN:
            return flickr
        key = await self.key_breaker.allow()
        if key.state == OPEN:
            return key
        return flickr if flickr.state != "closed" else key

    async def report(self, failure: Failure | None) -> None:
        """Feed one Flickr answer (None = success) to the breakers."""
        if failure is None or not failure.breaker:
            # Flickr answered (even with a refusal): the service and the key are fine. Closing is
            # idempotent, so the answers of a window close the breakers once, and nobody waits for it.
            self._successes.post(None)
        elif failure.breaker == "key":
            await self.key_breaker.failure()
        else:
            await self.flickr_breaker.failure()

    async def flickr_paused_ms(self) -> int:
        """How long the Flickr-wide breaker stays open (0 when closed or probing); cached for a second."""
        checked_at, paused = self._paused_cache
        if time.monotonic() - checked_at < 1.0:
            return paused
        snapshot = await self.flickr_breaker.snapshot()
        paused = 0
        if snapshot.get("state") == OPEN:
            time_ms = await self.flickr_breaker.redis_time_ms()
            paused = max(0, int(float(snapshot.get("until", "0")) - time_ms))
        self._paused_cache = (time.monotonic(), paused)
        return paused
