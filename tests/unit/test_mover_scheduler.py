"""The mover's fair scheduler, alone: weighted deficit round-robin over clients, tokens and priorities."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest

from mover.scheduler import Drr, FairScheduler, TokenQueue

PRIORITY_WEIGHTS = {"high": 4, "normal": 2, "low": 1}


def _queue(token: str, client: str = "c", high: int = 0, normal: int = 0, low: int = 0) -> TokenQueue:
    return TokenQueue(token, client, {"high": high, "normal": normal, "low": low})


def _drain(
    scheduler: FairScheduler, queues: dict[str, TokenQueue], grant: int, rounds: int
) -> list[dict[tuple[str, str], int]]:
    """Run `rounds` rounds, taking what each plan moved out of the queues."""
    plans = []
    for _ in range(rounds):
        plan = scheduler.plan(list(queues.values()), grant)
        assert sum(plan.values()) <= grant
        for (token, priority), n in plan.items():
            depths = dict(queues[token].depths)
            assert 0 < n <= depths[priority]
            depths[priority] -= n
            queues[token] = TokenQueue(token, queues[token].client, depths)
        plans.append(plan)
    return plans


def test_drr_shares_a_grant_by_weight_and_never_above_demand() -> None:
    drr = Drr()
    assert drr.split(8, {"a": 100, "b": 100}, {"a": 3.0, "b": 1.0}) == {"a": 6, "b": 2}
    assert drr.split(8, {"a": 100, "b": 1}, {"a": 1.0, "b": 1.0}) == {"a": 7, "b": 1}
    assert drr.split(5, {"a": 2, "b": 1}, {"a": 1.0, "b": 1.0}) == {"a": 2, "b": 1}
    assert drr.split(5, {"a": 0}, {"a": 1.0}) == {}
    assert drr.split(0, {"a": 3}, {"a": 1.0}) == {}


def test_drr_keeps_weighted_shares_when_each_round_grants_one() -> None:
    drr = Drr()
    got: Counter[str] = Counter()
    for _ in range(400):
        got.update(drr.split(1, {"a": 10, "b": 10, "c": 10}, {"a": 3.0, "b": 1.0, "c": 1.0}))
    assert got == {"a": 240, "b": 80, "c": 80}


def test_drr_gives_an_idle_flow_no_savings() -> None:
    drr = Drr()
    for _ in range(10):
        drr.split(1, {"a": 10, "b": 0}, {"a": 1.0, "b": 5.0})
    # b was idle: it starts from nothing, and a's turn still comes.
    first = [drr.split(1, {"a": 10, "b": 10}, {"a": 1.0, "b": 5.0}) for _ in range(6)]
    assert sum(p.get("a", 0) for p in first) == 1


def test_a_flood_on_one_token_does_not_take_a_small_tokens_share() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    queues = {"flood": _queue("flood", "c1", normal=10_000), "small": _queue("small", "c2", normal=1)}
    # Even when a round may move only one entry, the small token's job goes within two rounds.
    plans = _drain(scheduler, queues, grant=1, rounds=2)
    assert any(plan.get(("small", "normal")) == 1 for plan in plans)
    # With room for more, the small token is served in the first round, beside the flood.
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    plan = scheduler.plan([_queue("flood", "c1", normal=10_000), _queue("small", "c1", normal=1)], 20)
    assert plan == {("flood", "normal"): 19, ("small", "normal"): 1}


def test_client_weights_give_a_weighted_share_of_the_moves() -> None:
    scheduler = FairScheduler({"heavy": 3}, PRIORITY_WEIGHTS, token_cap=50)
    queues = {
        "h1": _queue("h1", "heavy", normal=10_000),
        "l1": _queue("l1", "light", normal=10_000),
        "l2": _queue("l2", "light", normal=10_000),
    }
    moved: Counter[str] = Counter()
    for plan in _drain(scheduler, queues, grant=10, rounds=100):
        for (token, _), n in plan.items():
            moved[queues[token].client] += n
    assert moved == {"heavy": 750, "light": 250}


def test_tokens_of_one_client_share_its_moves_equally() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    queues = {t: _queue(t, "one", normal=10_000) for t in ("t1", "t2", "t3")}
    moved: Counter[str] = Counter()
    for plan in _drain(scheduler, queues, grant=5, rounds=60):
        for (token, _), n in plan.items():
            moved[token] += n
    assert moved == {"t1": 100, "t2": 100, "t3": 100}


def test_a_tokens_cap_bounds_one_round_and_the_rest_goes_to_others() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    plan = scheduler.plan([_queue("a", "c1", normal=500), _queue("b", "c2", normal=3)], 1000)
    assert plan == {("a", "normal"): 50, ("b", "normal"): 3}
    assert scheduler.demand([_queue("a", normal=500), _queue("b", high=2, low=1)]) == 53


def test_high_priority_goes_first_without_starving_low() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    queues = {"t": _queue("t", high=1000, normal=1000, low=1000)}
    plans = _drain(scheduler, queues, grant=7, rounds=40)
    per_priority: Counter[str] = Counter()
    for plan in plans:
        for (_, priority), n in plan.items():
            per_priority[priority] += n
    assert per_priority == {"high": 160, "normal": 80, "low": 40}
    # Low moves in every single round of seven: it waits, but never long.
    assert all(plan.get(("t", "low"), 0) >= 1 for plan in plans)


def test_low_priority_takes_everything_once_high_is_drained() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    queues = {"t": _queue("t", high=3, low=100)}
    first = scheduler.plan(list(queues.values()), 10)
    assert first == {("t", "high"): 3, ("t", "low"): 7}


def test_state_of_drained_clients_and_tokens_is_forgotten() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    scheduler.plan([_queue(f"t{i}", f"c{i}", normal=5) for i in range(100)], 1000)
    scheduler.plan([_queue("t0", "c0", normal=1)], 10)
    assert set(scheduler._tokens) == {"c0"}
    assert set(scheduler._priorities) == {"t0"}


@pytest.mark.parametrize("grant", [1, 3, 17, 200])
def test_every_queued_token_is_served_within_a_bounded_number_of_rounds(grant: int) -> None:
    weights: Mapping[str, int] = {"c0": 5, "c1": 1, "c2": 2}
    scheduler = FairScheduler(weights, PRIORITY_WEIGHTS, token_cap=50)
    queues = {f"t{i}": _queue(f"t{i}", f"c{i % 3}", low=10_000) for i in range(9)}
    last_served = dict.fromkeys(queues, 0)
    worst_gap = 0
    for round_no, plan in enumerate(_drain(scheduler, queues, grant, rounds=300), start=1):
        for token, _ in plan:
            worst_gap = max(worst_gap, round_no - last_served[token])
            last_served[token] = round_no
    assert all(round_no > 0 for round_no in last_served.values())
    # Nine tokens, total weight 8 with the lightest at 1: a token waits at most a few passes.
    assert worst_gap <= max(1, 8 * 3 * 9 // grant)


def test_a_tokens_in_flight_cap_leaves_the_rest_of_the_round_to_others() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50, in_flight_cap=16)
    flood = TokenQueue("flood", "c", {"high": 0, "normal": 10_000, "low": 0}, in_flight=12)
    small = TokenQueue("small", "c", {"high": 0, "normal": 1, "low": 0}, in_flight=0)
    # The flood has 12 of its 16 in the work streams: 4 more may go, however large the grant.
    assert scheduler.demand([flood, small]) == 5
    assert scheduler.plan([flood, small], 100) == {("flood", "normal"): 4, ("small", "normal"): 1}


def test_a_token_at_its_in_flight_cap_moves_nothing_until_its_entries_finish() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50, in_flight_cap=16)
    full = TokenQueue("flood", "c", {"high": 5, "normal": 10_000, "low": 0}, in_flight=16)
    over = TokenQueue("flood", "c", {"high": 5, "normal": 10_000, "low": 0}, in_flight=40)  # lost removals
    assert scheduler.demand([full]) == scheduler.demand([over]) == 0
    assert scheduler.plan([full], 100) == {}
    # Workers finished three: three move.
    freed = TokenQueue("flood", "c", full.depths, in_flight=13)
    assert sum(scheduler.plan([freed], 100).values()) == 3


def test_no_in_flight_cap_by_default() -> None:
    scheduler = FairScheduler({}, PRIORITY_WEIGHTS, token_cap=50)
    busy = TokenQueue("t", "c", {"high": 0, "normal": 500, "low": 0}, in_flight=10_000)
    assert scheduler.plan([busy], 100) == {("t", "normal"): 50}
