"""What one mover knows about the active tokens between rounds (pure, no I/O).

A round used to ask Redis for every active token's depth per priority and in-flight count
(four commands a token, every round), although almost none of it changes between two
rounds. The mover now keeps that knowledge and refreshes only what may have changed:

* the active set is listed again only when its size or its change counter moved (the gateway
  only ever adds to it; every removal, and every re-addition by a mover, bumps the counter);
* a token's depth is not asked for at all: a token is read when the scheduler gives it moves,
  and the read itself says what is there (a stream that returned fewer entries than asked for
  is empty for now; one that returned nothing at all, with nothing held, starts the token's
  two-step exit from the active set);
* a token's in-flight count is read when the token is first seen, and again only when the
  mover's own count says it is at its cap (the count goes up with each move and down only by
  being read again, so it never under-counts this mover's own entries).

Entries read but not moved yet (a read asks every priority stream of the token for the same
count, and the priority split takes what it needs) are held here, pending in this mover's
consumer: they are moved by later rounds, kept fresh against other movers' claims, and put back
into their queues when the mover stops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from common import keys
from mover.scheduler import TokenQueue

# A depth nobody measured: the token is planned as if it had work, and the read will tell.
UNKNOWN = 1 << 30


@dataclass(frozen=True)
class Held:
    """An entry read from a token stream and not moved yet."""

    stream: str
    entry_id: str
    fields: dict[str, str]
    read_at: float  # monotonic


def _per_priority_deques() -> dict[str, deque[Held]]:
    return {p: deque() for p in keys.PRIORITIES}


def _per_priority_true() -> dict[str, bool]:
    return dict.fromkeys(keys.PRIORITIES, True)


@dataclass
class TokenState:
    """One active token as this mover knows it."""

    token: str
    client: str = ""
    loaded: bool = False  # client and in-flight count read from Redis
    in_flight: int = 0  # its entries in the work streams, as last read plus this mover's moves since
    synced_at: float = 0.0  # when in_flight was last read (monotonic)
    held: dict[str, deque[Held]] = field(default_factory=_per_priority_deques)
    more: dict[str, bool] = field(default_factory=_per_priority_true)  # stream may hold unread entries
    held_total: int = 0  # entries held, over every priority
    recheck_s: float = 0.0  # at its cap while other tokens move: how long before its count is read again
    _queue: TokenQueue | None = None  # what the scheduler was last shown (rebuilt when it changes)

    def depth(self) -> int:
        """What it has to move: exact when only held entries remain, else UNKNOWN (read to see)."""
        held = self.held_total
        if held and not any(self.more.values()):
            return held
        return UNKNOWN

    def queue(self) -> TokenQueue:
        """The token as the scheduler sees it."""
        depth, q = self.depth(), self._queue
        if (
            q is None
            or q.in_flight != self.in_flight
            or q.client != self.client
            or q.depths["normal"] != depth
        ):
            q = self._queue = TokenQueue(self.token, self.client, {"normal": depth}, self.in_flight)
        return q

    def put_back(self, priority: str, held: Held) -> None:
        """Hold an entry again at the front of its queue (its append failed)."""
        self.held[priority].appendleft(held)
        self.held_total += 1

    def held_depths(self) -> dict[str, int]:
        """Held entries per priority: what the priority split may take."""
        return {p: len(q) for p, q in self.held.items()}

    def take(self, priority: str, n: int) -> list[Held]:
        """Remove and return the `n` oldest held entries of one priority."""
        queue = self.held[priority]
        taken = [queue.popleft() for _ in range(min(n, len(queue)))]
        self.held_total -= len(taken)
        return taken

    def add_read(self, priority: str, entries: list[Held], asked: int) -> None:
        """Hold what a read of one priority stream returned; fewer than asked means it is empty now."""
        self.add_claimed(priority, entries)
        self.more[priority] = len(entries) >= asked

    def add_claimed(self, priority: str, entries: list[Held]) -> None:
        """Hold entries claimed from a dead mover (those not held already)."""
        queue = self.held[priority]
        known = {h.entry_id for h in queue}
        before = len(queue)
        queue.extend(h for h in entries if h.entry_id not in known)
        self.held_total += len(queue) - before

    def all_held(self) -> list[Held]:
        """Every held entry (for keeping them fresh or putting them back)."""
        return [h for q in self.held.values() for h in q]

    def refreshed(self, held: Held, now: float, *, kept: bool) -> None:
        """After an attempt to reset a held entry's idle time: still ours (read again now), or not."""
        queue = self.held[priority_of(held.stream)]
        if held not in queue:
            return
        if kept:
            queue[queue.index(held)] = Held(held.stream, held.entry_id, held.fields, now)
        else:
            queue.remove(held)  # another mover claimed it: that one moves it
            self.held_total -= 1

    def drop_held(self) -> None:
        """Forget every held entry (put back into its queue)."""
        for queue in self.held.values():
            queue.clear()
        self.held_total = 0


_PRIORITY_SUFFIX = {f":{p}": p for p in keys.PRIORITIES if p != "normal"}


def priority_of(stream: str) -> str:
    """The priority of a token stream, from its name (keys.token_stream)."""
    for suffix, priority in _PRIORITY_SUFFIX.items():
        if stream.endswith(suffix):
            return priority
    return "normal"


def token_of(stream: str) -> str:
    """The token of a token stream or in-flight set, from its hash tag."""
    return stream[stream.index("{") + 1 : stream.index("}")]


@dataclass
class ActiveSet:
    """The active set as last listed: its members, size and change counter."""

    card: int = -1
    changes: str = ""
    listed_at: float = float("-inf")

    def changed(self, card: int, changes: str) -> bool:
        """Whether a (size, change counter) read now means the set differs from the listed one."""
        return card != self.card or changes != self.changes
