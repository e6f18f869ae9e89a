"""ThreadHandoff: bounded, FIFO, never waits, from any thread to one loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agentcast.integrations.handoff import ThreadHandoff


async def test_items_come_out_in_offer_order() -> None:
    handoff: ThreadHandoff[int] = ThreadHandoff(asyncio.get_running_loop(), 10)
    for item in range(5):
        assert handoff.offer(item)
    assert [await handoff.take() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert (handoff.accepted, handoff.dropped) == (5, 0)


async def test_a_full_handoff_drops_and_counts_instead_of_waiting() -> None:
    handoff: ThreadHandoff[int] = ThreadHandoff(asyncio.get_running_loop(), 3)
    results = [handoff.offer(item) for item in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert (handoff.accepted, handoff.dropped, len(handoff)) == (3, 7, 3)
    assert [await handoff.take() for _ in range(3)] == [0, 1, 2]
    assert handoff.offer(99)  # room again
    assert await handoff.take() == 99


async def test_a_closed_handoff_refuses_offers_but_keeps_what_it_holds() -> None:
    handoff: ThreadHandoff[str] = ThreadHandoff(asyncio.get_running_loop(), 3)
    assert handoff.offer("kept")
    handoff.close()
    assert handoff.closed
    assert not handoff.offer("late")
    assert handoff.dropped == 1
    assert await handoff.take() == "kept"


async def test_offers_from_other_threads_wake_the_consumer_in_order() -> None:
    handoff: ThreadHandoff[tuple[int, int]] = ThreadHandoff(asyncio.get_running_loop(), 10_000)
    per_thread = 500

    def produce(worker: int) -> None:
        for index in range(per_thread):
            assert handoff.offer((worker, index))

    threads = [threading.Thread(target=produce, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    got: list[tuple[int, int]] = []
    async with asyncio.timeout(20):
        while len(got) < 4 * per_thread:
            got.append(await handoff.take())
    for thread in threads:
        thread.join()
    for worker in range(4):
        # Each thread's items keep the order of its calls.
        assert [index for w, index in got if w == worker] == list(range(per_thread))
    assert handoff.accepted == 4 * per_thread


async def test_take_waits_for_an_offer_from_a_thread() -> None:
    handoff: ThreadHandoff[str] = ThreadHandoff(asyncio.get_running_loop(), 1)
    waiter = asyncio.create_task(handoff.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    await asyncio.to_thread(handoff.offer, "hello")
    async with asyncio.timeout(20):
        assert await waiter == "hello"


def test_maxsize_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="maxsize"):
            ThreadHandoff(loop, 0)
    finally:
        loop.close()
