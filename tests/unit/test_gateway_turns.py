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


async def test_no_limit_means_no_waiting() -> None:
    turns = Turns(0)
    async with turns.turn("k"), turns.turn("k"):
        assert turns.keys == 0


def test_the_limit_is_a_checked_setting() -> None:
    assert Settings.from_env(env={}).gateway_user_turns == 8
    assert Settings.from_env(env={"GATEWAY_USER_TURNS": "0"}).gateway_user_turns == 0
    with pytest.raises(SettingsError, match="GATEWAY_USER_TURNS"):
        Settings.from_env(env={"GATEWAY_USER_TURNS": "-1"})
