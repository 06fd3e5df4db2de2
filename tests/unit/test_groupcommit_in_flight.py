"""Batcher(max_in_flight=N): items arriving while N flushes run go together when one ends."""

from __future__ import annotations

import asyncio
import gc

from common.groupcommit import Batcher


class SlowStore:
    """A flush that waits until released, recording each batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        return [i * 10 for i in items]


async def test_a_slow_flush_gathers_what_arrives_meanwhile_into_the_next_one() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store.flush, max_items=3, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert store.batches == [[0]]  # one flush in flight: the others wait, however many
    store.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
    assert store.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_items a flush, one after the other


async def test_without_a_bound_every_window_flushes_at_once_and_drain_waits_for_all() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store.flush)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    assert store.batches == [[1], [2]]
    bounded: Batcher[int, int] = Batcher(store.flush, max_in_flight=1)
    waiting = [asyncio.ensure_future(bounded.submit(i)) for i in (3, 4)]
    await asyncio.sleep(0.01)
    late = asyncio.ensure_future(bounded.submit(5))
    await asyncio.sleep(0)
    draining = asyncio.ensure_future(bounded.drain())
    await asyncio.sleep(0.01)
    store.release.set()
    await draining
    assert all(f.done() for f in [first, second, *waiting, late])
    assert store.batches[2:] == [[3, 4], [5]]


async def test_posted_items_share_the_window_s_flush_and_a_failed_flush_is_dropped_quietly() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[None]:
        batches.append(items)
        if items[0] < 0:
            raise ConnectionError("store down")
        return [None] * len(items)

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    try:
        batcher: Batcher[int, None] = Batcher(flush, window_s=0.02, max_in_flight=1)
        for i in range(5):
            batcher.post(i)  # returns at once: nothing waits for the flush
        assert batches == []
        await asyncio.sleep(0.05)
        assert batches == [[0, 1, 2, 3, 4]]
        batcher.post(-1)
        await asyncio.sleep(0.05)
        assert batches[-1] == [-1]
        gc.collect()  # an unretrieved exception would be reported when its future is collected
        await asyncio.sleep(0)
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)
