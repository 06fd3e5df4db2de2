"""The mover's fair scheduler: how many entries each token queue may move this round (pure, no I/O).

Three levels of deficit round-robin (DRR) share out the moves a round may make (the
Flickr budget granted, capped by the room left in the work streams):

1. clients (the API key ids that queued the work), by configured weight (default 1);
2. within a client, its tokens, equally;
3. within a token, its priority streams by weight (high:normal:low = 4:2:1 by default), so
   high goes first while low still moves every few turns and is never starved.

Credit a flow could not spend because the round's grant ran out is kept, and its turn
resumes next round; a flow with nothing queued keeps no credit (classic DRR), so an idle
client cannot save up a burst. A flood on one token is one flow among many: it gets its
weighted share of each round and nothing it takes is another token's share.

A token may also have at most `in_flight_cap` entries in the work streams at once (waiting
or running): sharing out the moves is not enough when the workers, not the budget, are the
bottleneck, since a flood would otherwise fill every worker slot and each small job would
wait behind all of them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_EPS = 1e-9


class Drr:
    """Deficit round-robin over named flows; the turn and unspent credit carry over between calls.

    A call costs O(flows) in C-speed steps (the flows are sorted again only when they change)
    plus O(visits) in Python: a mover round may share a handful of moves over hundreds of tokens.
    """

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}
        self._turn: str | None = None  # the flow whose visit comes next
        self._topped = False  # whether `_turn` already got its quantum for that visit
        self._live: frozenset[str] = frozenset()
        self._flows: list[str] = []  # sorted(self._live)

    def split(
        self, total: int, demand: Mapping[str, int], weights: Mapping[str, float] | None = None
    ) -> dict[str, int]:
        """Share `total` units over the flows with demand by weight (None: all 1), never above a demand."""
        live = frozenset(f for f, n in demand.items() if n > 0)
        if self._credit:
            self._credit = {f: c for f, c in self._credit.items() if f in live}
        if total <= 0 or not live:
            return {}
        if live != self._live:
            self._live, self._flows = live, sorted(live)
        flows = self._flows
        # One visit gives the lightest flow at least one unit (so every visit makes progress), and one
        # pass over every flow hands out about `total` (so a big grant needs few passes).
        if weights is None:
            quantum = max(1.0, total / len(flows))
        else:
            quantum = max(1.0 / min(weights[f] for f in flows), total / sum(weights[f] for f in flows))
        i = bisect_left(flows, self._turn) % len(flows) if self._turn is not None else 0
        topped = self._topped and flows[i] == self._turn
        given: dict[str, int] = {}
        left, unmet = total, len(flows)
        while left > 0 and unmet > 0:
            flow = flows[i]
            had = given.get(flow, 0)
            want = demand[flow] - had
            if want > 0:
                weight = 1.0 if weights is None else weights[flow]
                credit = self._credit.get(flow, 0.0) + (0.0 if topped else quantum * weight)
                n = min(int(credit + _EPS), want, left)
                had += n
                given[flow] = had
                left -= n
                credit -= n
                if had >= demand[flow]:
                    unmet -= 1
                    credit = 0.0  # nothing more to move this round: no savings for later
                self._credit[flow] = credit
                if left == 0 and had < demand[flow] and credit >= 1 - _EPS:
                    # The grant ran out in the middle of this flow's visit: it resumes next round.
                    self._turn, self._topped = flow, True
                    return _positive(given)
            topped = False
            i = (i + 1) % len(flows)
        self._turn, self._topped = flows[i], False
        return _positive(given)


def _positive(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: n for k, n in counts.items() if n > 0}


@dataclass(frozen=True)
class TokenQueue:
    """What one token has queued, per priority, and the client its work is counted against."""

    token: str
    client: str
    depths: Mapping[str, int]
    in_flight: int = 0  # entries of this token in the work streams now (waiting or running)
    total: int = field(init=False)  # entries queued over every priority

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.depths.values()))


class FairScheduler:
    """Clients by weight, their tokens equally, each token's priorities by weight (see the module doc)."""

    def __init__(
        self,
        client_weights: Mapping[str, int],
        priority_weights: Mapping[str, int],
        token_cap: int,
        default_weight: int = 1,
        in_flight_cap: int = 0,
    ) -> None:
        self._client_weights = dict(client_weights)
        self._priority_weights = {p: float(w) for p, w in priority_weights.items()}
        self._token_cap = token_cap
        self.in_flight_cap = in_flight_cap  # 0: no cap
        self._default_weight = default_weight
        self._clients = Drr()
        self._tokens: dict[str, Drr] = {}  # per client
        self._priorities: dict[str, Drr] = {}  # per token

    def weight(self, client: str) -> int:
        """A client's configured weight (the default for clients not named)."""
        return self._client_weights.get(client, self._default_weight)

    def token_demand(self, queue: TokenQueue) -> int:
        """The most one token may move this round: its queue, up to the round cap and its in-flight room."""
        demand = min(self._token_cap, queue.total)
        if self.in_flight_cap > 0:
            demand = min(demand, max(0, self.in_flight_cap - queue.in_flight))
        return demand

    def demand(self, queues: Sequence[TokenQueue]) -> int:
        """The most this round could move: the sum of every token's demand."""
        return sum(self.demands(queues).values())

    def demands(self, queues: Sequence[TokenQueue]) -> dict[str, int]:
        """Each queued token's demand (token_demand, inlined: the mover asks for hundreds a round)."""
        cap, in_flight_cap = self._token_cap, self.in_flight_cap
        out: dict[str, int] = {}
        for q in queues:
            total = q.total
            if total > 0:
                n = total if total < cap else cap
                if in_flight_cap > 0:
                    room = in_flight_cap - q.in_flight
                    n = n if n < room else max(0, room)
                out[q.token] = n
        return out

    def plan(self, queues: Sequence[TokenQueue], granted: int) -> dict[tuple[str, str], int]:
        """How many entries to read from each (token, priority) stream, `granted` in all at most."""
        by_token = {q.token: q for q in queues}
        plan: dict[tuple[str, str], int] = {}
        for token, n in self.plan_tokens(queues, granted).items():
            for priority, k in self.split(token, n, by_token[token].depths).items():
                plan[(token, priority)] = k
        return plan

    def plan_tokens(
        self, queues: Sequence[TokenQueue], granted: int, demands: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """How many entries each token may move, `granted` in all at most (clients, then their tokens).

        `demands`: what `demands(queues)` answers, when the caller has it already.
        """
        demands = self.demands(queues) if demands is None else demands
        by_client: dict[str, dict[str, int]] = {}
        for q in queues:
            if q.token in demands:
                by_client.setdefault(q.client, {})[q.token] = demands[q.token]
        # Forget the state of clients and tokens that have nothing queued (bounded memory).
        for client in self._tokens.keys() - by_client.keys():
            del self._tokens[client]
        for token in self._priorities.keys() - demands.keys():
            del self._priorities[token]
        client_share = self._clients.split(
            granted,
            {c: sum(d.values()) for c, d in by_client.items()},
            {c: float(self.weight(c)) for c in by_client},
        )
        plan: dict[str, int] = {}
        for client, n in client_share.items():
            plan.update(self._tokens.setdefault(client, Drr()).split(n, by_client[client]))
        return plan

    def split(self, token: str, n: int, depths: Mapping[str, int]) -> dict[str, int]:
        """Share one token's `n` moves over its priority streams by weight, never above a stream's depth."""
        return self._priorities.setdefault(token, Drr()).split(n, depths, self._priority_weights)
