"""The workflow store on SQLite and PostgreSQL: one transaction per batch, exactly-once
transitions, parking, wake-ups, outbox rows, and a log that replays byte for byte."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from agentcast.orchestration.db import open_db
from agentcast.orchestration.engine import Engine, format_micros
from agentcast.orchestration.instance import COMPLETED, FAILED
from agentcast.orchestration.replay import replay
from agentcast.orchestration.store import InputFailed, WorkflowStore
from agentcast.protocol.envelope import Envelope
from tests.orchestration.flows import AGENTS, IN, OUT, RESULTS, UNDO, counter

_ids = itertools.count(1)
T0 = 1_790_000_000_000_000


def event(kind: str | None, payload: Any = None, *, topic: str = IN, run: str = "r1",
          status: str | None = None, at: int = 0) -> Envelope:  # fmt: skip
    headers = {k: v for k, v in (("type", kind), ("status", status)) if v is not None}
    n = next(_ids)
    return Envelope(
        id=f"ev-{n}", topic=topic, seq=n, epoch="x", time=format_micros(T0 + at), source="s",
        payload=payload, headers=headers, correlation_id=run,
    )  # fmt: skip


async def outbox(store: WorkflowStore) -> list[tuple[str, Any, dict[str, str]]]:
    rows = await store.fetchall(
        "SELECT topic, payload, headers FROM {p}agentcast_outbox ORDER BY id"
    )

    def json(value: Any) -> Any:  # jsonb arrives decoded from PostgreSQL, text from SQLite
        return orjson.loads(value) if isinstance(value, str) else value

    return [(str(t), json(p), json(h)) for t, p, h in rows]


@pytest.fixture
async def store(wf_dsn: str) -> Any:
    s = WorkflowStore(open_db(wf_dsn), Engine([counter]))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_redelivered_events_change_nothing_the_second_time(store: WorkflowStore) -> None:
    start, add = event("start"), event("add", {"v": 2})
    first = await store.process([start, add])
    assert (first.applied, first.sent) == (2, 2)
    again = await store.process([add, start])
    assert (again.applied, again.duplicates, again.sent) == (0, 2, 0)
    instance = await store.instance("counter", "r1")
    assert instance is not None and orjson.loads(instance.state)["n"] == 2
    assert [t for t, _, _ in await outbox(store)] == [AGENTS, OUT]


async def test_out_of_order_events_wait_for_the_start(store: WorkflowStore) -> None:
    early = [event("add", {"v": v}, run="r2") for v in (1, 2, 3)]
    parked = await store.process(early)
    assert (parked.parked, parked.applied) == (3, 0)
    assert await store.instance("counter", "r2") is None
    assert (await store.process([early[0]])).duplicates == 1
    started = await store.process([event("start", run="r2")])
    assert started.applied == 4
    instance = await store.instance("counter", "r2")
    assert instance is not None and orjson.loads(instance.state)["seen"] == [1, 2, 3]


async def test_a_failing_handler_keeps_nothing_of_its_batch(store: WorkflowStore) -> None:
    with pytest.raises(InputFailed) as failed:
        await store.process([event("start"), event("add", {"no_v": 1})])
    assert isinstance(failed.value.__cause__, KeyError)
    assert await store.instance("counter", "r1") is None
    assert await outbox(store) == []


async def test_wakeups_fire_once_and_compensations_run_in_reverse(store: WorkflowStore) -> None:
    await store.process([event("start", {"expect": 1}, run="r3")])
    for name in ("a", "b"):
        await store.process([event("reserve", {"name": name}, run="r3")])
    assert await store.due(T0 + 999_999) == []
    (due,) = await store.due(T0 + 1_000_000)
    assert due.wakeup == "expect:result" and await store.next_due_us() == T0 + 1_000_000
    fired = await store.wake(due)
    assert (fired.applied, fired.sent) == (1, 3)
    assert (await store.wake(due)).applied == 0
    instance = await store.instance("counter", "r3")
    assert instance is not None and instance.status == FAILED
    sent = [(t, h.get("compensation")) for t, _, h in await outbox(store)]
    assert sent[-3:] == [(AGENTS, "b"), (AGENTS, "a"), (UNDO, "prepare")]
    assert await store.next_due_us() is None
    late = await store.process([event(None, topic=RESULTS, status="error", run="r3")])
    assert late.ignored == 1 and len(await outbox(store)) == len(sent)


async def test_timer_chain_and_completion_clear_the_instance(store: WorkflowStore) -> None:
    await store.process([event("start", {"tick": 0.5}, run="r4")])
    fired = 0
    while (due := await store.due(T0 + 10_000_000)) and fired < 10:
        for wakeup in due:
            fired += (await store.wake(wakeup)).applied
    assert fired == 3
    await store.process([event(None, topic=RESULTS, status="done", run="r4")])
    instance = await store.instance("counter", "r4")
    assert instance is not None and instance.status == COMPLETED
    processed = await store.fetchall("SELECT count(*) FROM {p}agentcast_wf_processed")
    assert int(processed[0][0]) == 0
    ticks = [p["tick"] for t, p, _ in await outbox(store) if t == OUT and "tick" in p]
    assert ticks == [1, 2, 3]


async def test_the_log_replays_byte_for_byte(store: WorkflowStore) -> None:
    await store.process([event("add", {"v": 7}, run="r5"), event("start", {"tick": 1}, run="r5")])
    for wakeup in await store.due(T0 + 1_000_000):
        await store.wake(wakeup)
    await store.process([event("reserve", {"name": "x"}, run="r5")])
    await store.process([event(None, "oops", topic=RESULTS, status="error", run="r5")])
    entries = await store.log("counter", "r5")
    assert [e.step for e in entries] == [1, 2, 3, 4, 5]
    report = replay(counter, "r5", entries)
    assert report.identical and report.steps == 5
    tampered = [*entries[:-1], type(entries[-1])(5, entries[-1].input, b"{}", entries[-1].state)]
    assert [d.part for d in replay(counter, "r5", tampered).differences] == ["effects"]


async def test_a_sqlite_store_creates_its_directory(tmp_path: Any) -> None:
    store = WorkflowStore(open_db(f"sqlite:///{tmp_path}/new/dir/wf.db"), Engine([counter]))
    await store.open()
    try:
        assert (await store.process([event("start", run="r9")])).applied == 1
    finally:
        await store.close()
