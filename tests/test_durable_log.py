"""The durable log's group commit, seen from its callers: outcomes, order and batch hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from agentcast.errors import Overloaded, Unavailable
from agentcast.hub.durable_log import DurableLog, OnDone, Outcome
from agentcast.storage.base import AppendResult, EventDraft, StoredEvent
from agentcast.storage.memory import MemoryHistoryStore


def draft(topic: str, n: int, key: str | None = None) -> EventDraft:
    return EventDraft(
        id=f"{topic}/{n}",
        topic=topic,
        time="2025-01-01T00:00:00.000000Z",
        source="ac://test",
        payload=orjson.dumps({"n": n}),
        idempotency_key=key,
    )


class GatedStore(MemoryHistoryStore):
    """A memory store whose appends wait for ``gate`` (so submissions pile up) and may fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail = False
        self.calls = 0

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise OSError("disk gone")
        return await super().append(drafts)


class Recorder:
    """Writes down, in order, every fan-out, outcome and batch end the log reports."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.batch_done = asyncio.Event()

    def committed(self, event: StoredEvent) -> None:
        self.log.append(("fan-out", event.seq))

    def outcome(self, name: str) -> OnDone:
        def on_done(outcome: Outcome) -> None:
            if isinstance(outcome, Exception):
                self.log.append((name, type(outcome).__name__))
            else:
                self.log.append((name, (outcome.event.seq, outcome.duplicate)))

        return on_done

    def batch(self) -> None:
        self.log.append(("batch", None))
        self.batch_done.set()


async def run_log(log: DurableLog) -> asyncio.Task[None]:
    task = asyncio.create_task(log.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_callbacks_follow_the_batch_fan_out_and_precede_the_batch_hook() -> None:
    store = GatedStore()
    seen = Recorder()
    log = DurableLog(store, seen.committed, on_batch_done=seen.batch)
    task = await run_log(log)
    try:
        log.submit_callback(draft("t.a", 1, key="k"), seen.outcome("a"))
        log.submit_callback(draft("t.a", 2, key="k"), seen.outcome("b"))  # same key: duplicate
        log.submit_callback(draft("t.a", 3), seen.outcome("c"))
        store.gate.set()
        await seen.batch_done.wait()
        assert store.calls == 1  # one commit for the three
        assert seen.log == [
            ("fan-out", 1),
            ("fan-out", 2),
            ("a", (1, False)),
            ("b", (1, True)),
            ("c", (2, False)),
            ("batch", None),
        ]
        assert (log.batches, log.appended, log.duplicates) == (1, 2, 1)
    finally:
        await stop(task)


async def test_a_failed_append_reports_unavailable_and_still_ends_the_batch() -> None:
    store = GatedStore()
    store.fail = True
    seen = Recorder()
    log = DurableLog(store, seen.committed, on_batch_done=seen.batch)
    task = await run_log(log)
    try:
        log.submit_callback(draft("t.a", 1), seen.outcome("a"))
        future = log.submit(draft("t.a", 2))
        store.gate.set()
        await seen.batch_done.wait()
        assert seen.log == [("a", "Unavailable"), ("batch", None)]
        with pytest.raises(Unavailable):
            await future
        assert log.failures == 1
    finally:
        await stop(task)


async def test_futures_and_callbacks_share_one_commit_in_submission_order() -> None:
    store = GatedStore()
    seen = Recorder()
    log = DurableLog(store, seen.committed)
    task = await run_log(log)
    try:
        first = log.submit(draft("t.b", 1))
        log.submit_callback(draft("t.b", 2), seen.outcome("second"))
        store.gate.set()
        result = await first
        await log.drain()
        assert result.event.seq == 1 and not result.duplicate
        assert seen.log == [("fan-out", 1), ("fan-out", 2), ("second", (2, False))]
    finally:
        await stop(task)


async def test_full_and_closed_logs_refuse_at_once_and_close_fails_the_waiting() -> None:
    store = GatedStore()
    seen = Recorder()
    log = DurableLog(store, seen.committed, max_pending=1)
    log.submit_callback(draft("t.c", 1), seen.outcome("waiting"))  # no run(): it stays queued
    with pytest.raises(Overloaded):
        log.submit_callback(draft("t.c", 2), seen.outcome("refused"))
    log.close()
    assert seen.log == [("waiting", "Unavailable")]
    with pytest.raises(Unavailable):
        log.submit_callback(draft("t.c", 3), seen.outcome("late"))
    await log.drain()  # nothing is left waiting
    assert len(log) == 0 and store.calls == 0
