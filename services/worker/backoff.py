"""Exponential backoff with "equal jitter": never shorter than half the step, never in lockstep."""

from __future__ import annotations

import random


def delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry `attempt` (1-based): uniform in [c/2, c], c = min(cap, base·2^(attempt-1))."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)
