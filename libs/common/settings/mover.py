"""The mover: rounds, fairness between clients and priorities, the Flickr budget and its breakers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

PRIORITIES = frozenset({"high", "normal", "low"})


@dataclass(frozen=True)
class MoverSettings:
    """How token queues are moved into the work streams (see services/mover)."""

    mover_port: int = setting("MOVER_PORT", 50052, "Mover gRPC port (health only).")
    mover_metrics_port: int = setting(
        "MOVER_METRICS_PORT", 9110, "Mover Prometheus port (`make run` gives replica i port+i)."
    )
    mover_batch: int = setting(
        "MOVER_BATCH", 50, "Entries one mover round takes from one token queue.", at_least=1
    )
    mover_claim_idle_s: float = setting(
        "MOVER_CLAIM_IDLE_S", 30.0, "Idle time after which a dead mover's entries are claimed."
    )
    mover_client_weights: str = setting(
        "MOVER_CLIENT_WEIGHTS",
        "",
        "Shares of the moves per client (API key id), `clientA=3,clientB=1`; clients not named weigh 1.",
    )
    mover_priority_weights: str = setting(
        "MOVER_PRIORITY_WEIGHTS",
        "high=4,normal=2,low=1",
        "Shares of a token's moves per job priority (high goes first, low is never starved).",
    )
    mover_work_backlog: int = setting(
        "MOVER_WORK_BACKLOG",
        32,
        "Entries the mover lets wait undelivered in the work streams; more stays in the token queues, "
        "where fairness and priorities still apply (too low starves the workers between rounds).",
        at_least=1,
    )
    mover_token_in_flight: int = setting(
        "MOVER_TOKEN_IN_FLIGHT",
        4,
        "Entries of one token in the work streams at once, waiting or running (0: no cap); a flood then "
        "holds few worker slots and little CPU, so other tokens' jobs do not queue behind it. One "
        "token's calls are bounded by the Flickr budget (about 1/s per API key), which 4 in flight "
        "sustains at any Flickr latency under 4 s.",
        at_least=0,
    )
    flickr_budget_per_hour: int = setting(
        "FLICKR_BUDGET_PER_HOUR",
        3500,
        "Flickr calls per hour per API key, smoothed and shared by every mover (Flickr allows 3,600).",
    )
    flickr_budget_burst: int = setting(
        "FLICKR_BUDGET_BURST", 5, "Calls that may go early within the hourly budget.", at_least=1
    )
    breaker_key_open_s: float = setting(
        "BREAKER_KEY_OPEN_S",
        300.0,
        "Pause of an API key after 3 consecutive Flickr 429s (doubles when repeated).",
    )
    breaker_flickr_threshold: int = setting(
        "BREAKER_FLICKR_THRESHOLD", 10, "Consecutive 5xx/timeouts/connection errors that pause all moving."
    )
    breaker_flickr_open_s: float = setting(
        "BREAKER_FLICKR_OPEN_S", 30.0, "Pause after a Flickr-wide outage is detected (doubles when repeated)."
    )

    @property
    def client_weights(self) -> dict[str, int]:
        """MOVER_CLIENT_WEIGHTS as client id → weight."""
        return parse_weights(self.mover_client_weights)

    @property
    def priority_weights(self) -> dict[str, int]:
        """MOVER_PRIORITY_WEIGHTS as priority → weight."""
        return parse_weights(self.mover_priority_weights)


def check_mover(s: Settings) -> None:
    """Weights that parse, one for each priority, and an hourly budget above its burst."""
    for name, raw in (
        ("MOVER_CLIENT_WEIGHTS", s.mover_client_weights),
        ("MOVER_PRIORITY_WEIGHTS", s.mover_priority_weights),
    ):
        try:
            parse_weights(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    if set(s.priority_weights) != PRIORITIES:
        raise SettingsError("MOVER_PRIORITY_WEIGHTS: give a weight to each of high, normal and low")
    if s.flickr_budget_per_hour <= s.flickr_budget_burst:
        raise SettingsError("FLICKR_BUDGET_PER_HOUR: must exceed FLICKR_BUDGET_BURST")


def parse_weights(raw: str) -> dict[str, int]:
    """`name=weight,name=weight` (weights are whole numbers of at least 1) as a dict."""
    weights: dict[str, int] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"expected name=weight (a whole number of at least 1), got {part.strip()!r}")
        if name in weights:
            raise ValueError(f"{name!r} is given twice")
        weights[name] = int(value)
    return weights
