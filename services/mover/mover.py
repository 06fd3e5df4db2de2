"""Moving jobs from per-token queues into the work streams of their targets.

Each round asks how much may move (breakers, room in the work streams, the Flickr
budget), lets the fair scheduler (mover.scheduler) share that out over clients,
their tokens and each token's priority streams, and moves what it read: append to
the work stream, then acknowledge and delete in the token stream. A mover killed
between the two leaves the entries pending in its consumer's PEL; another mover
claims them (XAUTOCLAIM) and moves them again, and the worker's guarded claim in
MongoDB turns the duplicate into a no-op.

The work streams are kept shallow (MOVER_WORK_BACKLOG undelivered entries): what
waits, waits in the token queues, where the scheduler still orders it. A work
stream filled with one token's flood would put every later job behind the flood.
For the same reason one token may have at most MOVER_TOKEN_IN_FLIGHT entries in the
work streams at once, waiting or running: the mover records each entry it moves in the
in-flight set (keys.IN_FLIGHT, one ZADD per round for every token) and the worker removes it
when it acknowledges the entry (one ZREM per turn); one token's count is a ZLEXCOUNT of its range,
several tokens' are read from the whole set at once.
A member whose worker died before removing it stops counting after the workers'
visibility timeout (and is dropped by the next trim, every IN_FLIGHT_TRIM_S), so a lost removal
can tighten the cap for a while, never for good.

What a round costs does not grow with the number of active tokens: the mover keeps what it
knows about them between rounds (mover.view) and asks Redis only what may have changed. A
round is two round trips. The first asks what changed (room in the work streams, the active
set's size and change counter, the in-flight counts of tokens at their cap, the breakers),
takes budget, and reads for the scheduler's plan, made from what the previous round found;
the previous round's acknowledgements and drain checks ride along. The second appends the
moves, with the drain steps. Entries read beyond what the round may move stay held for a later
round. Rounds are paced by what limits them: while the work streams are the limit, the pause
adapts so that a round finds about a quarter of MOVER_WORK_BACKLOG free; with nothing to move it
backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from common import keys, redisio
from common.breaker import CLOSED, PROBE, Decision
from common.budget import Grant
from common.flickr_guard import FlickrGuard
from common.settings import Settings
from mover import drain, metrics, upkeep
from mover.moving import work_entry
from mover.scheduler import FairScheduler, TokenQueue
from mover.view import ActiveSet, Held, TokenState, priority_of
from mover.wire import Command, Wire

log = logging.getLogger(__name__)

DELAYED_PUMP_S = 0.25
GAUGES_S = 5.0
# The active set is listed (and every token's client read) at least this often, whatever changed.
LIST_S = 5.0
# The room in the upload and replace streams (rarely used) is measured this often; rest every round.
OTHER_TARGETS_S = 0.25
# A mover heartbeats this often; one silent for MOVER_CLAIM_IDLE_S is taken for dead and its entries
# are claimed. Every token stream is also swept at start, once more MOVER_CLAIM_IDLE_S later, and
# every SWEEP_S (entries of movers that never heartbeated: older versions, tests).
HEARTBEAT_S = 1.0
SWEEP_S = 300.0
# A token this mover counts at its cap has its count read again each round while no other token
# could move, else after CAPPED_RECHECK_S, doubling up to CAPPED_RECHECK_MAX_S while it stays at its
# cap (other tokens take the moves meanwhile).
CAPPED_RECHECK_S = 0.02
CAPPED_RECHECK_MAX_S = 0.16
# A breaker found closed is looked at again after this long; open or probing, every round.
BREAKER_CACHE_S = 0.1
# Budget taken and not spent within this long is given up (a grant never waits long for its calls).
CREDIT_S = 1.0
# In-flight members older than the workers' visibility timeout (removals that never came) are
# dropped this often.
IN_FLIGHT_TRIM_S = 30.0
# A budget that allows more calls this soon is waited for by the next round's own round trips.
BUDGET_SPIN_S = 0.002
# Pacing: the pause after a round that found the work streams full adapts within these bounds.
MIN_GAP_S = 0.002
MAX_GAP_S = 0.05
# With nothing to move, the pause doubles from IDLE_MIN_S up to IDLE_MAX_S.
IDLE_MIN_S = 0.005
IDLE_MAX_S = 0.05
# While every queued token is at its in-flight cap, the pause grows as the idle one does, up to this.
IN_FLIGHT_WAIT_MAX_S = 0.02
# A token whose reads came back empty while its streams held entries (another mover's) is not
# taken out of the active set again for this long, doubling up to QUIET_MAX_S.
QUIET_MIN_S = 0.1
QUIET_MAX_S = 2.0


@dataclass
class _Looked:
    """What the first round trip found."""

    room: int = 0
    decision: Decision = field(default_factory=lambda: Decision(CLOSED))
    new_tokens: bool = False


@dataclass(slots=True)
class _Asked:
    """What a round's first round trip asks, in the order of its commands (and so of its replies)."""

    acks: dict[str, list[str]]  # the last round's moves, acknowledged in their token streams
    checks: list[str]  # tokens past drain step one: their streams' lengths
    targets: tuple[str, ...]  # the work streams whose room is measured (rest; all every OTHER_TARGETS_S)
    capped: list[TokenState]  # tokens at their cap whose in-flight count is read
    since: int  # in-flight members moved before this (ms) no longer count
    breakers: bool  # the breakers' states (a closed answer is trusted for BREAKER_CACHE_S)
    ask: int  # budget taken (0: none)
    chores: bool  # the retry pump's lease, due retries, tokens a dead mover left draining
    beat: bool  # this mover's heartbeat, and the movers fallen silent
    groups: list[tuple[list[str], int, list[tuple[TokenState, list[str]]]]]  # the reads for the plan
    commands: list[Command] = field(default_factory=list)


# A planned move: (priority rank, token, priority, the held entry).
_Pick = tuple[int, TokenState, str, Held]
# Of a pick, after its entry was checked: appended as (token, priority, held, work stream, fields), or
# dead-lettered as (token, priority, held).
_Live = tuple[TokenState, str, Held, str, dict[str, str]]
_Dead = tuple[TokenState, str, Held]


class Mover:
    """One mover replica; several may run at once."""

    def __init__(self, settings: Settings, redis: redisio.Redis, consumer: str) -> None:
        self._settings = settings
        self._redis = redis
        self._wire = Wire(settings.redis_url)  # the rounds' round trips (see mover.wire)
        self.consumer = consumer
        self.scheduler = FairScheduler(
            settings.client_weights,
            settings.priority_weights,
            token_cap=settings.mover_batch,
            in_flight_cap=settings.mover_token_in_flight,
        )
        # Older than this, an in-flight member is taken for a removal that never came (see the module doc).
        self._horizon_ms = int(settings.worker_visibility_timeout_s * 1000)
        self._stopping = asyncio.Event()
        self._started = time.monotonic()
        self._sweeps = [self._started, self._started + settings.mover_claim_idle_s]  # start, and once more
        self._last_sweep = float("-inf")
        self._last_beat = float("-inf")
        self._dead: list[str] = []  # movers found silent, claimed from by the next sweep
        self._last_fresh = self._started
        self._last_pump = float("-inf")
        self._last_gauges = float("-inf")
        self._last_trim = float("-inf")
        self._lease = redis.register_script(upkeep.LEASE)
        self._guard = FlickrGuard(redis, settings)
        self._breaker_keys = [
            keys.breaker(self._guard.flickr_breaker.name),
            keys.breaker(self._guard.key_breaker.name),
        ]
        self.wait_s = 0.0
        self._tokens: dict[str, TokenState] = {}
        self._listed = ActiveSet()
        self._acks: dict[str, list[str]] = {}  # moved (or dead-lettered), acknowledged next round
        self._checks: list[str] = []  # past drain step one: their streams are checked next round
        self._ends: list[tuple[str, bool]] = []  # checked: step two goes with the next moves
        self._quiet: dict[str, tuple[float, float]] = {}  # token -> (not drained before, next backoff)
        self._decision: tuple[float, Decision] | None = None
        self._credit, self._credit_until, self._budget_at = 0, 0.0, 0.0
        self._room_seen = 0
        self._last_grant = 0
        self._owed: dict[str, int] = {}  # moves planned and not made yet (token -> count), in plan order
        self._other_waiting, self._others_at = 0, float("-inf")
        self._gap = MIN_GAP_S
        self._idle = IDLE_MIN_S

    def stop(self) -> None:
        """Finish the current round, then return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        """Move until stopped, pacing rounds by what limits them and backing off while Redis is down."""
        while not self._stopping.is_set():
            try:
                moved = await self.run_round()
            except RedisError as exc:
                log.warning("redis error in mover round: %s", type(exc).__name__)
                moved, self.wait_s = 0, 0.5
            self._idle = IDLE_MIN_S if moved else min(self._idle * 2, IDLE_MAX_S)
            pause, self.wait_s = (self.wait_s if self.wait_s >= 0 else self._idle), -1.0
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=pause)
        with contextlib.suppress(RedisError):
            await self.release()
        self._wire.close()

    async def release(self) -> None:
        """Acknowledge what was moved and put back what is held (the mover is stopping)."""
        for held in await upkeep.put_back(self._redis, self._tokens):
            self._acks.setdefault(held.stream, []).append(held.entry_id)
        acks, self._acks = self._acks, {}
        await self._wire.execute([*_ack_commands(acks), ("ZREM", keys.MOVERS, self.consumer)])

    async def run_round(self) -> int:
        """One round: look at what changed (reading for the plan), then move. Returns entries moved.

        Sets `wait_s` to the pause the next round should wait (-1: the idle back-off decides).
        """
        started = time.perf_counter()
        self.wait_s = -1.0
        now = time.monotonic()
        if now - self._last_gauges >= GAUGES_S:
            self._last_gauges = now
            await upkeep.export_depths(self._redis)
        if self.scheduler.in_flight_cap and now - self._last_trim >= IN_FLIGHT_TRIM_S:
            self._last_trim = now
            await upkeep.trim_in_flight(self._redis, int(time.time() * 1000) - self._horizon_ms)
        plan, ask = self._speculate(now)
        looked = await self._look(now, plan, ask)
        await self._claims(now)
        moved = await self._round(now, plan, looked)
        metrics.ROUND_SECONDS.observe(time.perf_counter() - started)
        return moved

    # --- planning ---------------------------------------------------------------------------------

    def _queues(self) -> list[TokenQueue]:
        return [t.queue() for t in self._tokens.values() if t.loaded]

    def _speculate(self, now: float) -> tuple[dict[str, int], int]:
        """The plan to read for in the first round trip, from what the last round saw; and budget to ask.

        The room is taken to be what the last round found (workers free it at a steady pace); the
        budget, what is at hand plus what the take in the same round trip granted last time. Moves
        the scheduler gave that a round could not make (less room or budget than expected) are owed:
        they go first in the next rounds, in the scheduler's order, before it plans anything new.
        """
        if now >= self._credit_until:
            self._credit = 0
        decision = self._decision[1] if self._decision else None
        if self._room_seen <= 0 or (decision is not None and not decision.allowed):
            return self._owed, 0
        queues = self._queues()
        demands = self.scheduler.demands(queues)
        demand = sum(demands.values())
        if demand <= 0:
            return self._owed, 0
        want = min(self._settings.mover_work_backlog, demand)
        ask = want - self._credit if self._credit < want and now >= self._budget_at else 0
        expected = self._credit + (min(ask, self._last_grant or self._guard.budget.burst) if ask else 0)
        allowed = min(self._room_seen, expected, demand) - sum(self._owed.values())
        if allowed > 0:
            for token, n in self.scheduler.plan_tokens(queues, allowed, demands).items():
                self._owed[token] = self._owed.get(token, 0) + n
        return self._owed, ask

    # --- the first round trip -------------------------------------------------------------------

    def _asking(self, now: float, plan: dict[str, int], ask: int) -> _Asked:
        """What the first round trip asks, with its commands; `_look` reads the replies in this order."""
        others = now - self._others_at >= OTHER_TARGETS_S
        asked = _Asked(
            acks=self._acks,
            checks=self._checks,
            targets=keys.TARGETS if others else ("rest",),
            capped=self._capped(now),
            since=int(time.time() * 1000) - self._horizon_ms,
            breakers=self._decision is None or now - self._decision[0] >= BREAKER_CACHE_S,
            ask=ask,
            chores=now - self._last_pump >= DELAYED_PUMP_S,
            beat=now - self._last_beat >= HEARTBEAT_S,
            groups=_grouped(self._reads(plan)),
        )
        self._acks, self._checks = {}, []
        commands = _ack_commands(asked.acks)
        for token in asked.checks:
            commands += drain.check(token)
        # The workers' group's lag is what waits undelivered (one command; XLEN - XPENDING when unknown).
        commands += [("XINFO", "GROUPS", keys.work_stream(target)) for target in asked.targets]
        commands += [("SCARD", keys.ACTIVE_TOKENS), ("GET", keys.ACTIVE_CHANGES)]
        commands += _count_commands(asked.capped, asked.since)
        if asked.breakers:
            commands += [("HGET", key, "state") for key in self._breaker_keys]
        if ask:
            commands.append(self._guard.budget.take_command(ask))
        if asked.chores:
            self._last_pump = now
            commands += self._chore_commands()
        if asked.beat:
            self._last_beat = now
            commands += self._beat_commands()
        commands += [self._read_command(streams, n) for streams, n, _ in asked.groups]
        asked.commands = commands
        return asked

    def _beat_commands(self) -> list[Command]:
        """This mover's heartbeat, and the movers silent for MOVER_CLAIM_IDLE_S (taken for dead)."""
        now_ms = int(time.time() * 1000)
        silent = now_ms - int(self._settings.mover_claim_idle_s * 1000)
        return [("ZADD", keys.MOVERS, now_ms, self.consumer), ("ZRANGEBYSCORE", keys.MOVERS, "-inf", silent)]

    def _chore_commands(self) -> list[Command]:
        """The retry pump's lease, the due retries and the tokens a dead mover left draining."""
        now_ms = int(time.time() * 1000)
        cutoff = now_ms - int(drain.ABANDONED_S * 1000)
        return [
            ("EVAL", upkeep.LEASE, 1, keys.delayed_lock(), self.consumer, int(DELAYED_PUMP_S * 4000)),
            ("ZRANGEBYSCORE", keys.DELAYED, "-inf", now_ms, "LIMIT", 0, 500),
            ("ZRANGEBYSCORE", keys.DRAINING_TOKENS, "-inf", cutoff, "LIMIT", 0, 500),
        ]

    async def _look(self, now: float, plan: dict[str, int], ask: int) -> _Looked:
        """Acknowledge, look at what changed, take budget, read for the plan: one round trip."""
        asked = self._asking(now, plan, ask)
        try:
            replies = iter(await self._wire.execute(asked.commands))
        except RedisError:
            self._merge_acks(asked.acks)  # sent again with the next round's
            self._checks = asked.checks + self._checks
            raise
        # The replies, in the order `_asking` put the commands.
        for _ in range(2 * len(asked.acks)):
            next(replies)  # an acknowledgement on a group Redis lost has nothing left to do
        width = len(keys.PRIORITIES)
        for token in asked.checks:
            self._ends.append((token, drain.holds(_ok([next(replies) for _ in range(width)]))))
        lags = [_lag(next(replies)) for _ in asked.targets]
        waiting = (
            await self._waiting(asked.targets, lags) if None in lags else [int(lag or 0) for lag in lags]
        )
        looked = _Looked(room=self._room(now, waiting))
        card, changes = _ok([next(replies), next(replies)])
        if asked.capped:
            self._recounted(now, asked.capped, _counted(asked.capped, _ok([next(replies)])[0], asked.since))
        states = [next(replies) for _ in self._breaker_keys] if asked.breakers else []
        grant = Grant.from_reply(_ok([next(replies)])[0]) if ask else None
        chores = _ok([next(replies) for _ in range(3)]) if asked.chores else []
        if asked.beat:
            self._dead = [m for m in _ok([next(replies), next(replies)])[1] if m != self.consumer]
        for (_, n, members), result in zip(asked.groups, replies, strict=True):
            await self._hold_all(now, members, n, result)
        # Then act on what was found.
        if grant is not None:
            self._granted(now, ask, grant)
        looked.decision = await self._breakers(now, states)
        if chores:
            await self._chores(*chores)
        if self._listed.changed(int(card), str(changes or "")) or now - self._listed.listed_at >= LIST_S:
            looked.new_tokens = await self._list(now)
        return looked

    def _room(self, now: float, waiting: list[int]) -> int:
        """Room left in the work streams from what waits undelivered in each target's (`waiting`,
        rest first; the upload and replace streams' as last measured when not asked this round)."""
        if len(waiting) > 1:
            self._others_at, self._other_waiting = now, sum(waiting[1:])
        room = self._settings.mover_work_backlog - waiting[0] - self._other_waiting
        self._room_seen = max(0, room)
        return room

    def _recounted(self, now: float, capped: list[TokenState], counts: list[int]) -> None:
        """Take the in-flight counts read for tokens at their cap."""
        for state, count in zip(capped, counts, strict=True):
            state.in_flight, state.synced_at = count, now
            # Still at its cap: read again later and later (while other tokens move, see _capped).
            still = state.in_flight >= self.scheduler.in_flight_cap
            state.recheck_s = (
                min(CAPPED_RECHECK_MAX_S, max(CAPPED_RECHECK_S, 2 * state.recheck_s)) if still else 0.0
            )

    async def _chores(self, lease: object, due: list[Any], left: list[Any]) -> None:
        """Pump the due retries while this mover holds the lease; finish tokens a dead mover left draining."""
        if lease:
            await upkeep.requeue_due(self._redis, due, self._settings.dead_letters_max)
        if left:
            log.warning("finishing %d token(s) a mover left draining", len(left))
            await upkeep.finish_draining(self._redis, [str(t) for t in left])

    async def _waiting(self, targets: Sequence[str], lags: list[int | None]) -> list[int]:
        """The undelivered entries of each target's work stream, counted where its lag was unknown.

        Redis reports no lag before the group exists, before 7.0, or after entries the group had
        not been given yet were deleted: then XLEN minus what is pending.
        """
        unknown = [keys.work_stream(t) for t, lag in zip(targets, lags, strict=True) if lag is None]
        commands: list[Command] = []
        for stream in unknown:
            commands += [("XLEN", stream), ("XPENDING", stream, keys.WORKER_GROUP)]
        replies = iter(await self._wire.execute(commands))
        return [int(lag) if lag is not None else _undelivered(next(replies), next(replies)) for lag in lags]

    def _capped(self, now: float) -> list[TokenState]:
        """Tokens at their cap (as this mover counts) whose in-flight count is to be read this round."""
        cap = self.scheduler.in_flight_cap
        if not cap:
            return []
        capped, others = [], False
        for t in self._tokens.values():
            if t.loaded:
                if t.in_flight >= cap:
                    capped.append(t)
                else:
                    others = True
        return [t for t in capped if now - t.synced_at >= t.recheck_s] if others else capped

    async def _claims(self, now: float) -> None:
        """Sweep the token streams for a dead mover's entries when one is found (then once more, for what it
        read after its last heartbeat), at start and now and then; keep the entries held here fresh."""
        idle_s = self._settings.mover_claim_idle_s
        if self._dead:
            dead, self._dead = self._dead, []
            log.warning("claiming what dead mover(s) %s left", ", ".join(dead))
            await self._wire.execute([("ZREM", keys.MOVERS, *dead)])
            self._sweeps = sorted([*self._sweeps, now, now + idle_s])
        due = now - self._last_sweep >= SWEEP_S
        while self._sweeps and now >= self._sweeps[0]:
            self._sweeps.pop(0)
            due = True
        if due:
            self._last_sweep = now
            count = self._settings.mover_batch
            # Also over the tokens of the active and draining sets this view does not hold: it lets a
            # token go while its streams read empty, which is just what a dead mover's entries look like.
            listed = await self._wire.execute(
                [("SMEMBERS", keys.ACTIVE_TOKENS), ("ZRANGE", keys.DRAINING_TOKENS, 0, -1)]
            )
            others = {str(t) for members in _ok(listed) for t in members} - set(self._tokens)
            if await upkeep.claim(
                self._redis, self.consumer, self._tokens, int(idle_s * 1000), count, others
            ):
                self._listed = ActiveSet()  # list (and load the tokens taken back) next round
        if now - self._last_fresh >= idle_s / 4:
            self._last_fresh = now
            await upkeep.keep_fresh(self._redis, self.consumer, self._tokens, idle_s / 4)

    def _reads(self, plan: dict[str, int]) -> list[tuple[TokenState, list[str], int]]:
        """For each planned token holding too few: its short priority streams (read together: `_grouped`)."""
        reads = []
        for token, n in plan.items():
            state = self._tokens.get(token)
            if state is None:
                continue
            short = [keys.token_stream(token, p) for p in keys.PRIORITIES if len(state.held[p]) < n]
            if short:
                reads.append((state, short, n))
        return reads

    def _read_command(self, streams: list[str], count: int) -> Command:
        arrows = [">"] * len(streams)
        return (
            "XREADGROUP",
            "GROUP",
            keys.MOVER_GROUP,
            self.consumer,
            "COUNT",
            count,
            "STREAMS",
            *streams,
            *arrows,
        )

    async def _hold_all(
        self, now: float, members: list[tuple[TokenState, list[str]]], n: int, result: Any
    ) -> None:
        """Hold what one read of several tokens' streams returned (each stream's entries with its token)."""
        if isinstance(result, Exception):
            if not redisio.is_nogroup(result):
                raise result
            # One stream without its group fails the whole read: make sure every one has it.
            for state, _ in members:
                for stream in keys.token_streams(state.token):
                    await redisio.ensure_group(self._redis, stream, keys.MOVER_GROUP)
            return  # not known to be empty: read again next round
        got: dict[str, list[Held]] = {}
        for stream, entries in result or []:
            got[stream] = [Held(stream, entry_id, _pairs(flat), now) for entry_id, flat in entries if flat]
        for state, streams in members:
            for stream in streams:
                state.add_read(priority_of(stream), got.get(stream, []), n)

    def _granted(self, now: float, ask: int, grant: Grant) -> None:
        self._last_grant = grant.granted
        if grant.granted:
            self._credit += grant.granted
            self._credit_until = now + CREDIT_S
        if grant.granted < ask:
            self._budget_at = now + min(1.0, max(0.0005, grant.wait_ms / 1000))
            if not self._credit:
                metrics.BUDGET_WAITS.inc()

    async def _breakers(self, now: float, states: list[Any]) -> Decision:
        """The breakers' decision: closed while both hashes say so, else asked properly (probe, pause)."""
        if not states:
            assert self._decision is not None
            return self._decision[1]
        if all(s in (None, CLOSED) for s in states):
            decision = Decision(CLOSED)
        else:
            decision = await self._guard.may_move()
        metrics.PAUSED.set(0 if decision.allowed else 1)
        self._decision = (now, decision) if decision.state == CLOSED else (now - BREAKER_CACHE_S, decision)
        return decision

    async def _list(self, now: float) -> bool:
        """List the active set; read new tokens' clients and in-flight counts (every client now and then).

        Returns whether new tokens were found.
        """
        full = now - self._listed.listed_at >= LIST_S  # a token may change client
        # The counter before the members: a change in between is seen next round.
        changes, members = await self._wire.execute(
            [("GET", keys.ACTIVE_CHANGES), ("SMEMBERS", keys.ACTIVE_TOKENS)]
        )
        listed = set(_ok([members])[0])
        self._listed = ActiveSet(len(listed), str(changes or ""), now)
        self._quiet = {t: q for t, q in self._quiet.items() if t in listed}
        for token in list(self._tokens):
            if token not in listed and not self._tokens[token].held_total:
                del self._tokens[token]
        for token in listed:
            if token not in self._tokens:
                self._tokens[token] = TokenState(token)
        metrics.ACTIVE_TOKENS.set(len(self._tokens))
        new = [t for t in self._tokens.values() if not t.loaded]
        named = list(self._tokens.values()) if full else new
        if not named:
            return False
        cap = self.scheduler.in_flight_cap
        since = int(time.time() * 1000) - self._horizon_ms
        commands: list[Command] = [("HMGET", keys.TOKEN_CLIENTS, *[t.token for t in named])]
        if cap:
            commands += _count_commands(new, since)
        clients, *reply = _ok(await self._wire.execute(commands))
        for state, client in zip(named, clients, strict=True):
            state.client = str(client or "")  # queued by an older gateway: one unnamed client
        counts = _counted(new, reply[0], since) if reply else [0] * len(new)
        for state, count in zip(new, counts, strict=True):
            state.in_flight, state.loaded, state.synced_at = count, True, now
        return bool(new)

    # --- the second round trip ------------------------------------------------------------------

    async def _round(self, now: float, plan: dict[str, int], looked: _Looked) -> int:
        """Move what the round may: the plan read ahead first, then, if room is left, a plan made now."""
        room, decision = looked.room, looked.decision
        if room <= 0:
            metrics.WORK_FULL.inc()
            self._pace(room, 0)
            return await self._move(now, {}, 0)  # drain steps still go
        if not decision.allowed:
            self.wait_s = min(1.0, decision.retry_after_ms / 1000)
            return await self._move(now, {}, 0)
        limit = 1 if decision.state == PROBE else room
        moved = await self._move(now, plan, min(limit, self._credit))
        if moved < limit:
            # Read ahead too little (first round, new tokens, a pause, reads that came back short).
            moved += await self._late(now, limit - moved)
        if looked.new_tokens and not moved:
            self.wait_s = 0.0
        elif moved >= room:
            self._pace(room, moved)
        elif moved and not self._credit and now < self._budget_at:
            # The budget was the limit: go on when it allows (at once if that is sooner than a round trip).
            wait = self._budget_at - now
            self.wait_s = wait if wait >= BUDGET_SPIN_S else 0.0
        return moved

    async def _late(self, now: float, left: int) -> int:
        """Plan, read and move up to `left` more entries now (two more round trips, three with a take)."""
        if self._credit_short(now):
            self.wait_s = max(0.0005, self._budget_at - now)
            return 0
        queues = self._queues()
        demands = self.scheduler.demands(queues)
        demand = sum(demands.values())
        if demand <= 0:
            if queues and not self._credit_short(now):
                # Every queued token has its cap in the work streams: look again soon, then less often.
                metrics.IN_FLIGHT_FULL.inc()
                self.wait_s = min(self._idle, IN_FLIGHT_WAIT_MAX_S)
            return 0
        if self._credit < min(left, demand) and now >= self._budget_at:
            ask = min(self._settings.mover_work_backlog, demand) - self._credit
            self._granted(now, ask, await self._guard.budget.take(ask))
        allowed = min(left, demand, self._credit)
        if allowed <= 0:
            self.wait_s = max(0.0005, self._budget_at - now)
            return 0
        plan = self.scheduler.plan_tokens(queues, allowed, demands)
        await self._read_now(now, plan)
        return await self._move(now, plan, allowed)

    def _credit_short(self, now: float) -> bool:
        return not self._credit and now < self._budget_at

    async def _read_now(self, now: float, plan: dict[str, int]) -> None:
        reads = self._reads(plan)
        if not reads:
            return
        groups = _grouped(reads)
        replies = await self._wire.execute([self._read_command(streams, n) for streams, n, _ in groups])
        for (_, n, members), result in zip(groups, replies, strict=True):
            await self._hold_all(now, members, n, result)

    def _pace(self, room: int, moved: int) -> None:
        """The pause before the next round: about a quarter of the backlog should be free by then."""
        backlog = self._settings.mover_work_backlog
        if room > backlog // 2 and moved >= room:
            self._gap = max(MIN_GAP_S, self._gap / 2)  # a large room filled: workers may run short
        elif room < max(1, backlog // 8):
            self._gap = min(MAX_GAP_S, self._gap * 1.5)
        if room <= 0 or moved >= room:
            self.wait_s = self._gap

    async def _move(self, now: float, plan: dict[str, int], allowed: int) -> int:
        """Append up to `allowed` planned entries to the work streams, high priorities first."""
        picks, drains = self._pick(now, plan, allowed)
        ends, self._ends = self._ends, []
        if not picks and not drains and not ends:
            return 0
        now_ms = int(time.time() * 1000)
        live, dead, members = self._checked(picks, now_ms)
        # The in-flight members go before the work entries (no worker may finish one first). MULTI
        # could not span the set and a work stream on a cluster; nor need it: see the module doc.
        commands: list[Command] = [("ZADD", keys.IN_FLIGHT, *_scored(members))] if members else []
        commands += [_xadd(stream, fields) for _, _, _, stream, fields in live]
        trim = ("MAXLEN", "~", self._settings.dead_letters_max)
        for _, _, held in dead:
            fields = {**held.fields, "dlq_reason": "malformed", "dlq_source": "mover"}
            commands.append(_xadd(keys.DEAD_LETTERS, fields, trim))
        commands += [drain.begin(state.token, now_ms) for state in drains]
        commands += [drain.end(token, holds) for token, holds in ends]
        try:
            replies = await self._wire.execute(commands)
        except RedisError:
            for _, state, priority, held in reversed(picks):
                state.put_back(priority, held)
            self._ends = ends + self._ends
            raise
        moved = self._appended(live, dead, replies[1 if members else 0 :])
        for state in drains:
            self._tokens.pop(state.token, None)
            self._checks.append(state.token)
        self._after_ends(now, ends)
        self._credit -= moved
        return moved

    def _pick(self, now: float, plan: dict[str, int], allowed: int) -> tuple[list[_Pick], list[TokenState]]:
        """The held entries the plan moves (up to `allowed`, within each token's in-flight cap), high
        priorities first; and the tokens to take out of the active set (read empty, nothing held)."""
        cap = self.scheduler.in_flight_cap
        picks: list[_Pick] = []
        drains: list[TokenState] = []
        left = allowed
        owed = plan is self._owed
        for token, n in list(plan.items()):
            state = self._tokens.get(token)
            if state is None:  # left the active set meanwhile
                plan.pop(token, None)
                continue
            if not state.held_total and not any(state.more.values()) and self._may_drain(token, now):
                drains.append(state)
            m = min(n, left, state.held_total, max(0, cap - state.in_flight) if cap else n)
            if owed:
                # Still owed only what the round's room or budget cut short; a token that had less
                # (or is at its cap) forfeits the rest of its turn, as it would have in the plan.
                if m < n and left == m and state not in drains:
                    plan[token] = n - m
                else:
                    del plan[token]
            if m <= 0:
                continue
            left -= m
            for priority, k in self.scheduler.split(token, m, state.held_depths()).items():
                rank = keys.PRIORITIES.index(priority)
                picks.extend((rank, state, priority, held) for held in state.take(priority, k))
        picks.sort(key=lambda pick: pick[0])  # stable: token order kept within a priority
        return picks, drains

    def _checked(self, picks: list[_Pick], now_ms: int) -> tuple[list[_Live], list[_Dead], list[str]]:
        """Each pick's work entry (`mover.moving`), or a dead letter when it is malformed; and the
        in-flight members of the entries to append."""
        cap = self.scheduler.in_flight_cap
        live: list[_Live] = []
        dead: list[_Dead] = []
        members: list[str] = []
        for _, state, priority, held in picks:
            try:
                stream, job_id, fields = work_entry(held.fields)
            except ValueError as exc:
                metrics.MALFORMED.inc()
                log.error("malformed entry %s in token queue: %s", held.entry_id, exc)
                dead.append((state, priority, held))
                continue
            if cap:
                fields["moved_ms"] = str(now_ms)
                members.append(keys.in_flight_member(state.token, now_ms, job_id))
            live.append((state, priority, held, stream, fields))
        return live, dead, members

    def _appended(self, live: list[_Live], dead: list[_Dead], replies: list[Any]) -> int:
        """Settle each append by its reply (those of `live`, then of `dead`); the entries moved."""
        moved = 0
        for (state, priority, held, stream, _), reply in zip(live, replies[: len(live)], strict=True):
            if self._settle(state, priority, held, reply, moved=True):
                moved += 1
                metrics.MOVED.labels(target=stream.rsplit(":", 1)[1]).inc()
        replies = replies[len(live) :]
        for (state, priority, held), reply in zip(dead, replies[: len(dead)], strict=True):
            self._settle(state, priority, held, reply, moved=False)
        return moved

    def _settle(self, state: TokenState, priority: str, held: Held, reply: object, *, moved: bool) -> bool:
        """After the append: acknowledge next round, or hold the entry again when the append failed."""
        if isinstance(reply, Exception):
            log.warning("append failed, the entry is tried again: %s", reply)
            state.put_back(priority, held)
            return False
        self._acks.setdefault(held.stream, []).append(held.entry_id)
        if moved and self.scheduler.in_flight_cap:
            state.in_flight += 1
        return True

    def _may_drain(self, token: str, now: float) -> bool:
        until, _ = self._quiet.get(token, (0.0, QUIET_MIN_S))
        return now >= until

    def _after_ends(self, now: float, ends: list[tuple[str, bool]]) -> None:
        for token, holds in ends:
            if holds:
                # Entries another mover holds (or that arrived meanwhile): not drained again for a while.
                _, backoff = self._quiet.get(token, (0.0, QUIET_MIN_S))
                self._quiet[token] = (now + backoff, min(QUIET_MAX_S, backoff * 2))
            else:
                self._quiet.pop(token, None)

    def _merge_acks(self, acks: dict[str, list[str]]) -> None:
        for stream, ids in acks.items():
            self._acks.setdefault(stream, []).extend(ids)

    # --- for tests and operators -----------------------------------------------------------------

    async def _deactivate(self, tokens: Iterable[str]) -> None:
        """Take drained tokens out of the active set now, putting back any whose queues hold entries."""
        tokens = list(tokens)
        if not tokens:
            return
        now_ms = int(time.time() * 1000)
        await self._wire.execute([drain.begin(token, now_ms) for token in tokens])
        await upkeep.finish_draining(self._redis, tokens)

    async def repair_draining(self) -> int:
        """Finish taking out the tokens a dead mover left draining; returns how many."""
        cutoff = int((time.time() - drain.ABANDONED_S) * 1000)
        left: list[Any] = await self._redis.zrangebyscore(
            keys.DRAINING_TOKENS, "-inf", cutoff, start=0, num=500
        )
        if left:
            log.warning("finishing %d token(s) a mover left draining", len(left))
            await upkeep.finish_draining(self._redis, [str(t) for t in left])
        return len(left)

    async def export_depths(self) -> None:
        """Refresh the queue-depth gauges."""
        await upkeep.export_depths(self._redis)

    async def pump_delayed(self) -> int:
        """Put due retries back into their token queues (one mover at a time holds the lease)."""
        if not await self._lease(
            keys=[keys.delayed_lock()], args=[self.consumer, int(DELAYED_PUMP_S * 4000)]
        ):
            return 0
        due: list[Any] = await self._redis.zrangebyscore(
            keys.DELAYED, "-inf", int(time.time() * 1000), start=0, num=500
        )
        return await upkeep.requeue_due(self._redis, due, self._settings.dead_letters_max)


def _grouped(
    reads: list[tuple[TokenState, list[str], int]],
) -> list[tuple[list[str], int, list[tuple[TokenState, list[str]]]]]:
    """The reads of a round as one XREADGROUP per count (COUNT applies per stream): (streams, count,
    the tokens and their streams). Most rounds read every token for the same count: one command."""
    by_count: dict[int, list[tuple[TokenState, list[str]]]] = {}
    for state, streams, n in reads:
        by_count.setdefault(n, []).append((state, streams))
    return [
        ([stream for _, streams in members for stream in streams], n, members)
        for n, members in by_count.items()
    ]


def _count_commands(states: list[TokenState], since_ms: int) -> list[Command]:
    """The command counting `states`' in-flight members moved since `since_ms`: one ZLEXCOUNT for
    one token, else the whole set in one read (it holds no more than the work streams do)."""
    if not states:
        return []
    if len(states) == 1:
        return [("ZLEXCOUNT", keys.IN_FLIGHT, *keys.in_flight_range(states[0].token, since_ms))]
    return [("ZRANGEBYLEX", keys.IN_FLIGHT, "-", "+")]


def _counted(states: list[TokenState], reply: Any, since_ms: int) -> list[int]:
    """Per state, its count from `_count_commands`' reply."""
    if len(states) == 1:
        return [int(reply)]
    counts = keys.in_flight_counts(reply, since_ms)
    return [counts.get(state.token, 0) for state in states]


def _scored(members: list[str]) -> list[str | int]:
    """ZADD arguments for IN_FLIGHT members (every score 0: the set sorts by name)."""
    args: list[str | int] = []
    for member in members:
        args += [0, member]
    return args


def _ack_commands(acks: dict[str, list[str]]) -> list[Command]:
    commands: list[Command] = []
    for stream, ids in acks.items():
        commands += [("XACK", stream, keys.MOVER_GROUP, *ids), ("XDEL", stream, *ids)]
    return commands


def _xadd(stream: str, fields: dict[str, str], options: Command = ()) -> Command:
    command: list[str | int | float | bytes] = ["XADD", stream, *options, "*"]
    for key, value in fields.items():
        command += [key, value]
    return tuple(command)


def _pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _lag(reply: object) -> int | None:
    """The workers' group's lag from an XINFO GROUPS reply (0 when the stream does not exist), or None."""
    if isinstance(reply, Exception):
        if "no such key" in str(reply):
            return 0
        raise reply
    for group in reply if isinstance(reply, list) else []:
        fields = dict(zip(group[::2], group[1::2], strict=True)) if isinstance(group, list) else {}
        info = {_text(k): v for k, v in fields.items()}
        if _text(info.get("name", "")) == keys.WORKER_GROUP:
            lag = info.get("lag")
            return None if lag is None else int(lag)
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _undelivered(length: object, pending: object) -> int:
    """Entries of a work stream no worker has been given yet."""
    if isinstance(length, Exception):
        raise length
    # NOGROUP: no worker has started yet, so nothing was delivered.
    delivered = 0 if isinstance(pending, Exception) else int(pending[0])  # type: ignore[index]
    return max(0, int(str(length)) - delivered)


def _ok(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
