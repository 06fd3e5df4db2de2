"""Taking a drained token out of the active set, in two cluster-legal steps.

The gateway appends to a token's stream before it adds the token to the active set, so
removing first and checking the streams after can never strand a job. The token's streams
and the scheduler's sets live in different cluster slots, so this cannot be one atomic step:
step one removes the token and marks it draining (one script over the `{sched}` keys), step
two reads the token's stream lengths and then either puts it back or forgets its client. A
mover killed between the two leaves the mark, and any mover finishes the job later
(`Mover.repair_draining`).

Every change a mover makes to the active set bumps its change counter (same hash tag), so
other movers know to list the set again; the gateway only ever adds, which changes its size.
"""

from __future__ import annotations

from collections.abc import Sequence

from common import keys

# KEYS: active set, draining zset, change counter. ARGV: token, now ms. Step one.
# EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot; these are tiny and rare.
BEGIN = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[3]) end
return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
"""
# KEYS: active set, draining zset, token-client hash, change counter. ARGV: token, 1 if its queues
# hold entries. Step two: back into the active set, or gone (its client too, unless the gateway
# re-added it meanwhile).
END = """
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[4]) end
  return 1
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then redis.call('HDEL', KEYS[3], ARGV[1]) end
return 0
"""
# A token draining this long was left by a mover that died between the two steps.
ABANDONED_S = 2.0


Command = tuple[str | int, ...]


def begin(token: str, now_ms: int) -> Command:
    """Step one for `token`."""
    return ("EVAL", BEGIN, 3, keys.ACTIVE_TOKENS, keys.DRAINING_TOKENS, keys.ACTIVE_CHANGES, token, now_ms)


def check(token: str) -> list[Command]:
    """The length of each of the token's streams (sent after step one completed)."""
    return [("XLEN", stream) for stream in keys.token_streams(token)]


def holds(lengths: Sequence[object]) -> bool:
    """Whether the lengths `check` asked for say the token still has entries."""
    return any(int(str(n)) > 0 for n in lengths)


def end(token: str, holds_entries: bool) -> Command:
    """Step two for `token`."""
    return (
        "EVAL",
        END,
        4,
        keys.ACTIVE_TOKENS,
        keys.DRAINING_TOKENS,
        keys.TOKEN_CLIENTS,
        keys.ACTIVE_CHANGES,
        token,
        "1" if holds_entries else "0",
    )
