"""gateway.turns: one user's flood holds at most `limit` turns; other users never wait behind it."""

from __future__ import annotations

import asyncio

import pytest

from common.settings import Settings, SettingsError
from gateway.turns import Turns


async def test_a_key_holds_at_most_its_limit_and_another_key_goes_at_once() -> None:
    turns = Turns(2)
    release = asyncio.Event()
    inside: dict[str, int] = {"flood": 0, "small": 0}
    most = 0

    async def call(key: str) -> None:
        nonlocal most
        async with turns.turn(key):
            inside[key] += 1
            most = max(most, inside["flood"])
            if key == "flood":
                await release.wait()
            inside[key] -= 1

    flood = [asyncio.create_task(call("flood")) for _ in range(6)]
    await asyncio.sleep(0.01)
    assert inside["flood"] == 2 and turns.keys == 1  # four wait their turn
    await asyncio.wait_for(call("small"), 1.0)  # not behind the flood
    release.set()
    await asyncio.gather(*flood)
    assert most == 2
    assert turns.keys == 0  # nothing kept for keys no longer used


async def test_waiting_callers_go_in_arrival_order_and_a_failure_frees_its_turn() -> None:
    turns = Turns(1)
    order: list[int] = []
    gate = asyncio.Event()

    async def call(i: int) -> None:
        async with turns.turn("k"):
            if i == 0:
                await gate.wait()
                raise RuntimeError("refused")
            order.append(i)

    tasks = [asyncio.create_task(call(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert order == [1, 2, 3]
    assert turns.keys == 0


async def test_acquire_and_release_hold_at_most_the_limit_and_serve_waiters_in_order() -> None:
    turns = Turns(2)
    await turns.acquire("k")
    await turns.acquire("k")
    order: list[int] = []

    async def call(i: int) -> None:
        await turns.acquire("k")
        order.append(i)

    waiting = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert order == []  # both turns are held
    turns.release("k")
    await asyncio.sleep(0.01)
    assert order == [0]  # one turn freed: the longest waiting caller took it
    turns.release("k")  # the second of the first two turns: to the next caller
    await asyncio.sleep(0.01)
    assert order == [0, 1]
    turns.release("k")  # caller 0 is done
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    turns.release("k")
    assert turns.keys == 1  # caller 2 still holds its turn
    turns.release("k")
    assert turns.keys == 0


async def test_a_waiter_cancelled_while_waiting_leaves_the_line_without_taking_a_turn() -> None:
    turns = Turns(1)
    await turns.acquire("k")
    order: list[int] = []

    async def call(i: int) -> None:
        await turns.acquire("k")
        order.append(i)
        turns.release("k")

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    await asyncio.sleep(0.01)
    turns.release("k")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert order == [0, 2]
    assert turns.keys == 0


async def test_a_waiter_cancelled_after_it_was_handed_a_turn_passes_the_turn_on() -> None:
    turns = Turns(1)
    await turns.acquire("k")
    handed = asyncio.create_task(turns.acquire("k"))
    after = asyncio.create_task(turns.acquire("k"))
    await asyncio.sleep(0.01)
    turns.release("k")  # the turn goes to `handed`...
    handed.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(after, 1.0)  # the turn went on to the next caller, not lost
    assert turns.keys == 1
    third = asyncio.create_task(turns.acquire("k"))
    await asyncio.sleep(0.01)
    assert not third.done()  # still one turn at a time
    turns.release("k")
    await asyncio.wait_for(third, 1.0)
    turns.release("k")
    assert turns.keys == 0


async def test_no_limit_means_no_waiting() -> None:
    turns = Turns(0)
    async with turns.turn("k"), turns.turn("k"):
        assert turns.keys == 0
    await turns.acquire("k")
    await turns.acquire("k")
    turns.release("k")
    assert turns.keys == 0


def test_the_limit_is_a_checked_setting() -> None:
    assert Settings.from_env(env={}).gateway_user_turns == 8
    assert Settings.from_env(env={"GATEWAY_USER_TURNS": "0"}).gateway_user_turns == 0
    with pytest.raises(SettingsError, match="GATEWAY_USER_TURNS"):
        Settings.from_env(env={"GATEWAY_USER_TURNS": "-1"})
