"""One suite for every HistoryStore: memory, SQLite and PostgreSQL must behave the same."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from agentcast.config import ConfigError
from agentcast.storage.base import AppendResult, EventDraft, HistoryStore, StoredEvent
from agentcast.storage.factory import open_history_store
from agentcast.storage.memory import MemoryHistoryStore
from agentcast.storage.postgres import PostgresHistoryStore
from agentcast.storage.sqlite import SqliteHistoryStore

if TYPE_CHECKING:
    from tests.storage.conftest import StoreFactory

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def at(second: float) -> str:
    """RFC 3339 time ``second`` seconds after BASE_TIME, as the hub writes it."""
    moment = BASE_TIME + timedelta(seconds=second)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def draft(topic: str, n: int, *, key: str | None = None, second: float | None = None) -> EventDraft:
    """Event number ``n`` of ``topic``, stamped ``n`` seconds (or ``second``) after BASE_TIME."""
    return EventDraft(
        id=f"{topic}/{n}/{uuid.uuid4().hex[:8]}",
        topic=topic,
        time=at(n if second is None else second),
        source="ac://test",
        payload=orjson.dumps({"n": n}),
        idempotency_key=key,
    )


def seqs(results: list[AppendResult]) -> list[int]:
    return [r.event.seq for r in results]


async def fill(store: HistoryStore, topic: str, count: int) -> list[StoredEvent]:
    results = await store.append([draft(topic, n) for n in range(1, count + 1)])
    return [r.event for r in results]


# -- positions -------------------------------------------------------------------------------


async def test_seq_starts_at_one_and_is_gapless_per_topic(history_store: HistoryStore) -> None:
    singles = [await history_store.append([draft("t.a", n)]) for n in range(1, 4)]
    assert [r[0].event.seq for r in singles] == [1, 2, 3]
    batch = await history_store.append([draft("t.a", n) for n in range(4, 8)])
    assert seqs(batch) == [4, 5, 6, 7]
    assert seqs(await history_store.append([draft("t.b", 1)])) == [1]
    assert seqs(await history_store.append([draft("t.a", 8)])) == [8]
    assert all(not r.duplicate for batch in singles for r in batch)


async def test_batch_spans_topics_and_keeps_list_order(history_store: HistoryStore) -> None:
    batch = [draft("m.a", 1), draft("m.b", 1), draft("m.a", 2), draft("m.c", 1), draft("m.b", 2)]
    results = await history_store.append(batch)
    assert [(r.event.topic, r.event.seq) for r in results] == [
        ("m.a", 1),
        ("m.b", 1),
        ("m.a", 2),
        ("m.c", 1),
        ("m.b", 2),
    ]
    assert [r.event.id for r in results] == [d.id for d in batch]
    read_a = await history_store.read("m.a", 0, 10)
    assert [e.id for e in read_a] == [batch[0].id, batch[2].id]
    epochs = {r.event.topic: r.event.epoch for r in results}
    for topic, epoch in epochs.items():
        position = await history_store.position(topic)
        assert position is not None and position.epoch == epoch


async def test_a_failing_batch_stores_nothing(history_store: HistoryStore) -> None:
    await history_store.append([draft("f.a", 1)])
    bad = EventDraft("bad", "f.b", "not a time", "ac://test", b"{}")
    with pytest.raises(ValueError):
        await history_store.append([draft("f.a", 2), draft("f.c", 1), bad])
    position = await history_store.position("f.a")
    assert position is not None and position.last_seq == 1
    assert await history_store.position("f.b") is None
    assert await history_store.position("f.c") is None
    assert seqs(await history_store.append([draft("f.a", 2)])) == [2]


async def test_empty_append_is_a_no_op(history_store: HistoryStore) -> None:
    assert await history_store.append([]) == []
    assert await history_store.topics() == []


async def test_position(history_store: HistoryStore) -> None:
    assert await history_store.position("p.a") is None
    first = await fill(history_store, "p.a", 3)
    position = await history_store.position("p.a")
    assert position is not None
    assert (position.epoch, position.last_seq, position.first_seq) == (first[0].epoch, 3, 1)
    await history_store.append([draft("p.a", 4), draft("p.b", 1)])
    later = await history_store.position("p.a")
    assert later is not None
    assert (later.epoch, later.last_seq, later.first_seq) == (position.epoch, 4, 1)
    assert await history_store.position("p.c") is None


async def test_topics_lists_every_known_topic(history_store: HistoryStore) -> None:
    assert await history_store.topics() == []
    await history_store.append([draft("z.b", 1), draft("z.a", 1)])
    await history_store.append([draft("z.c", 1)])
    assert sorted(await history_store.topics()) == ["z.a", "z.b", "z.c"]


# -- reads -----------------------------------------------------------------------------------


async def test_read_after_seq_and_limit(history_store: HistoryStore) -> None:
    events = await fill(history_store, "r.a", 10)
    assert await history_store.read("r.a", 0, 3) == events[:3]
    assert await history_store.read("r.a", 3, 100) == events[3:]
    assert await history_store.read("r.a", 9, 5) == events[9:]
    assert await history_store.read("r.a", 10, 5) == []
    assert await history_store.read("r.a", 0, 0) == []
    assert await history_store.read("r.unknown", 0, 5) == []


async def test_read_last(history_store: HistoryStore) -> None:
    events = await fill(history_store, "l.a", 10)
    assert await history_store.read_last("l.a", 3) == events[7:]
    assert await history_store.read_last("l.a", 100) == events
    assert await history_store.read_last("l.a", 0) == []
    assert await history_store.read_last("l.unknown", 3) == []
    await history_store.trim("l.a", 5, None)
    assert await history_store.read_last("l.a", 8) == events[5:]


async def test_read_since_time(history_store: HistoryStore) -> None:
    events = await fill(history_store, "s.a", 10)  # event n at BASE_TIME + n seconds
    assert await history_store.read_since_time("s.a", at(5), 100) == events[4:]
    assert await history_store.read_since_time("s.a", at(4.5), 2) == events[4:6]
    assert await history_store.read_since_time("s.a", at(0), 100) == events
    assert await history_store.read_since_time("s.a", at(11), 100) == []
    # Other RFC 3339 spellings of the same instants compare by time, not as strings.
    assert await history_store.read_since_time("s.a", "2025-01-01T00:00:07Z", 100) == events[6:]
    assert (
        await history_store.read_since_time("s.a", "2025-01-01T01:00:08+01:00", 100) == events[7:]
    )
    assert await history_store.read_since_time("s.unknown", at(0), 10) == []


async def test_round_trip_is_exact(history_store: HistoryStore) -> None:
    payload = orjson.dumps({"text": "héllo \u2603 \U0001f680", "list": [1, 2.5, None], "q": '"'})
    full = EventDraft(
        id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        topic="rt.a",
        time="2025-01-01T00:00:00.123456Z",
        source="ac://agent/planner",
        payload=payload,
        headers={"traceparent": "00-abc-def-01", "ünïcode": "välue", "empty": ""},
        correlation_id="run-42",
        causation_id="0190a1b2-0000-7000-8000-000000000000",
        lamport=2**40 + 7,
    )
    bare = EventDraft("id-2", "rt.a", "2025-01-01T00:00:01Z", "s", b"null")
    results = await history_store.append([full, bare])
    stored = await history_store.read("rt.a", 0, 10)
    assert stored == [r.event for r in results]
    assert stored[0] == StoredEvent.from_draft(full, stored[0].epoch, 1)
    assert stored[1] == StoredEvent.from_draft(bare, stored[0].epoch, 2)
    assert isinstance(stored[0].payload, bytes) and stored[0].payload == payload
    assert stored[1].headers == {} and stored[1].correlation_id is None
    assert stored[0].envelope_json() == results[0].event.envelope_json()
    assert orjson.loads(stored[0].envelope_json())["payload"] == orjson.loads(payload)


# -- retention -------------------------------------------------------------------------------


async def test_trim_by_count_moves_first_seq_only(history_store: HistoryStore) -> None:
    events = await fill(history_store, "c.a", 10)
    before = await history_store.position("c.a")
    assert await history_store.trim("c.a", 4, None) == 6
    after = await history_store.position("c.a")
    assert before is not None and after is not None
    assert (after.epoch, after.last_seq, after.first_seq) == (before.epoch, 10, 7)
    assert await history_store.read("c.a", 0, 100) == events[6:]
    assert await history_store.trim("c.a", 4, None) == 0
    assert await history_store.trim("c.a", 10, None) == 0
    assert seqs(await history_store.append([draft("c.a", 11)])) == [11]
    assert await history_store.trim("c.a", 0, None) == 5
    empty = await history_store.position("c.a")
    assert empty is not None
    assert (empty.epoch, empty.last_seq, empty.first_seq) == (before.epoch, 11, 12)
    assert await history_store.read_last("c.a", 10) == []
    assert await history_store.trim("c.unknown", 0, None) == 0
    with pytest.raises(ValueError):
        await history_store.trim("c.a", -1, None)


async def test_trim_by_age(history_store: HistoryStore) -> None:
    events = await fill(history_store, "g.a", 10)  # event n at BASE_TIME + n seconds
    assert await history_store.trim("g.a", 1000, at(6)) == 5
    position = await history_store.position("g.a")
    assert position is not None
    assert (position.epoch, position.last_seq, position.first_seq) == (events[0].epoch, 10, 6)
    assert await history_store.read("g.a", 0, 100) == events[5:]
    # The count bound still applies next to the age bound: the stricter one wins.
    assert await history_store.trim("g.a", 2, at(7)) == 3
    assert await history_store.read("g.a", 0, 100) == events[8:]
    assert await history_store.trim("g.a", 1000, at(100)) == 2
    position = await history_store.position("g.a")
    assert position is not None and (position.last_seq, position.first_seq) == (10, 11)


async def test_trim_by_age_keeps_history_contiguous(history_store: HistoryStore) -> None:
    seconds = [1, 2, 9, 3, 4, 10]  # the third event's clock ran ahead
    results = await history_store.append(
        [draft("o.a", n, second=s) for n, s in enumerate(seconds, 1)]
    )
    assert await history_store.trim("o.a", 1000, at(5)) == 2
    assert await history_store.read("o.a", 0, 10) == [r.event for r in results[2:]]


# -- idempotency -----------------------------------------------------------------------------


async def test_duplicate_key_returns_the_original(history_store: HistoryStore) -> None:
    original = (await history_store.append([draft("i.a", 1, key="k1")]))[0]
    assert not original.duplicate
    retry = (await history_store.append([draft("i.a", 1, key="k1")]))[0]
    assert retry.duplicate and retry.event == original.event
    position = await history_store.position("i.a")
    assert position is not None and position.last_seq == 1
    assert await history_store.read("i.a", 0, 10) == [original.event]
    assert seqs(await history_store.append([draft("i.a", 2, key="k2")])) == [2]


async def test_duplicate_key_inside_one_batch(history_store: HistoryStore) -> None:
    stored = (await history_store.append([draft("i.b", 0, key="old")]))[0].event
    batch = [
        draft("i.b", 1, key="k"),
        draft("i.b", 2),
        draft("i.b", 3, key="k"),
        draft("i.b", 4, key="old"),
        draft("i.b", 5, key="other"),
    ]
    results = await history_store.append(batch)
    assert [(r.event.seq, r.duplicate) for r in results] == [
        (2, False),
        (3, False),
        (2, True),
        (1, True),
        (4, False),
    ]
    assert results[2].event == results[0].event and results[0].event.id == batch[0].id
    assert results[3].event == stored
    assert [e.id for e in await history_store.read("i.b", 0, 10)] == [
        stored.id,
        batch[0].id,
        batch[1].id,
        batch[4].id,
    ]


async def test_keys_expire_after_the_dedupe_window(store_factory: StoreFactory) -> None:
    store = await store_factory.open(dedupe_window=10.0)
    first = (await store.append([draft("x.a", 1, key="k")]))[0]
    store_factory.clock.advance(9.5)
    retry = (await store.append([draft("x.a", 2, key="k")]))[0]
    assert retry.duplicate and retry.event == first.event
    store_factory.clock.advance(1.0)  # 10.5 s after the first append
    again = (await store.append([draft("x.a", 3, key="k")]))[0]
    assert not again.duplicate and again.event.seq == 2
    store_factory.clock.advance(5.0)  # the key now points at seq 2, for 10 s from its reuse
    retry2 = (await store.append([draft("x.a", 4, key="k")]))[0]
    assert retry2.duplicate and retry2.event == again.event


async def test_keys_are_scoped_per_topic(history_store: HistoryStore) -> None:
    results = await history_store.append([draft("k.a", 1, key="same"), draft("k.b", 1, key="same")])
    assert [(r.event.topic, r.event.seq, r.duplicate) for r in results] == [
        ("k.a", 1, False),
        ("k.b", 1, False),
    ]
    again = await history_store.append([draft("k.b", 2, key="same"), draft("k.a", 2, key="same")])
    assert [(r.event.topic, r.event.seq, r.duplicate) for r in again] == [
        ("k.b", 1, True),
        ("k.a", 1, True),
    ]


async def test_duplicate_of_a_trimmed_event_keeps_its_position(
    history_store: HistoryStore,
) -> None:
    original_draft = draft("d.a", 1, key="k")
    original = (await history_store.append([original_draft, draft("d.a", 2)]))[0].event
    assert await history_store.trim("d.a", 1, None) == 1
    retry = (await history_store.append([original_draft]))[0]
    assert retry.duplicate and retry.event == original
    position = await history_store.position("d.a")
    assert position is not None and (position.last_seq, position.first_seq) == (2, 2)


# -- reset -----------------------------------------------------------------------------------


async def test_reset_starts_a_new_epoch(history_store: HistoryStore) -> None:
    old = await fill(history_store, "e.a", 3)
    await history_store.append([draft("e.a", 4, key="k"), draft("e.b", 1)])
    epoch = await history_store.reset("e.a")
    assert epoch != old[0].epoch
    position = await history_store.position("e.a")
    assert position is not None
    assert (position.epoch, position.last_seq, position.first_seq) == (epoch, 0, 1)
    assert await history_store.read("e.a", 0, 10) == []
    results = await history_store.append([draft("e.a", 1), draft("e.a", 2, key="k")])
    assert [(r.event.epoch, r.event.seq, r.duplicate) for r in results] == [
        (epoch, 1, False),
        (epoch, 2, False),
    ]
    other = await history_store.position("e.b")
    assert other is not None and other.last_seq == 1
    fresh = await history_store.reset("e.new")
    position = await history_store.position("e.new")
    assert position is not None and (position.epoch, position.last_seq) == (fresh, 0)


# -- concurrency and a model -----------------------------------------------------------------


async def test_concurrent_appends_get_gapless_seqs_in_call_order(
    history_store: HistoryStore,
) -> None:
    calls = [history_store.append([draft("cc.a", n)]) for n in range(100)]
    results = await asyncio.gather(*calls)
    assert [r[0].event.seq for r in results] == list(range(1, 101))
    stored = await history_store.read("cc.a", 0, 1000)
    assert [e.seq for e in stored] == list(range(1, 101))
    assert [e.id for e in stored] == [r[0].event.id for r in results]


async def test_concurrent_multi_topic_batches(history_store: HistoryStore) -> None:
    calls = [
        history_store.append(
            [draft(t, n) for t in (("mt.a", "mt.b") if n % 2 else ("mt.b", "mt.a"))]
        )
        for n in range(60)
    ]
    await asyncio.gather(*calls)
    for topic in ("mt.a", "mt.b"):
        assert [e.seq for e in await history_store.read(topic, 0, 1000)] == list(range(1, 61))


@dataclass
class ModelTopic:
    """What a topic must hold: its position and retained (seq, second, id) triples."""

    epoch: str = ""
    last_seq: int = 0
    events: list[tuple[int, int, str]] = field(default_factory=list)

    def first_seq(self) -> int:
        return self.events[0][0] if self.events else self.last_seq + 1


class HistoryModel:
    """The obvious list-based reference for one store, checked after every operation."""

    def __init__(self, store: HistoryStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.prefix = f"h{uuid.uuid4().hex[:12]}."  # fresh topics in a shared store
        self.topics: dict[str, ModelTopic] = {}
        self.keys: dict[tuple[str, str], tuple[int, str]] = {}
        self.counter = 0

    def topic(self) -> str:
        return self.rng.choice("aaabbc")

    def seen(self, topic: str, events: list[StoredEvent]) -> list[tuple[int, str]]:
        state = self.topics[topic]
        assert all(e.epoch == state.epoch and e.topic == self.prefix + topic for e in events)
        return [(e.seq, e.id) for e in events]

    async def step(self) -> None:
        op = self.rng.choices(
            ["append", "read", "read_last", "since", "trim", "position"],
            weights=[5, 2, 1, 1, 1, 1],
        )[0]
        topic = self.topic()
        if op == "append":
            await self.append()
        elif topic not in self.topics:
            name = self.prefix + topic
            assert await self.store.position(name) is None
            assert await self.store.read(name, 0, 10) == []
            assert await self.store.trim(name, 0, None) == 0
        else:
            await getattr(self, op)(topic)

    async def append(self) -> None:
        specs = [
            (
                self.topic(),
                self.rng.choice([None, None, None, "k0", "k1", "k2"]),
                self.rng.randrange(31),
            )
            for _ in range(self.rng.randint(1, 8))
        ]
        drafts = []
        for topic, key, second in specs:
            self.counter += 1
            drafts.append(draft(self.prefix + topic, self.counter, key=key, second=second))
        results = await self.store.append(drafts)
        for (topic, key, second), sent, result in zip(specs, drafts, results, strict=True):
            state = self.topics.setdefault(topic, ModelTopic(result.event.epoch))
            assert result.event.epoch == state.epoch
            if key is not None and (topic, key) in self.keys:
                seq, id_ = self.keys[topic, key]
                assert result.duplicate and result.event.seq == seq
                if any(s == seq for s, _, _ in state.events):
                    assert result.event.id == id_
                continue
            state.last_seq += 1
            state.events.append((state.last_seq, second, sent.id))
            if key is not None:
                self.keys[topic, key] = (state.last_seq, sent.id)
            assert not result.duplicate
            assert (result.event.seq, result.event.id) == (state.last_seq, sent.id)

    async def read(self, topic: str) -> None:
        after, limit = self.rng.randrange(self.topics[topic].last_seq + 2), self.rng.randint(1, 8)
        got = await self.store.read(self.prefix + topic, after, limit)
        expected = [(s, i) for s, _, i in self.topics[topic].events if s > after][:limit]
        assert self.seen(topic, got) == expected

    async def read_last(self, topic: str) -> None:
        count = self.rng.randrange(10)
        got = await self.store.read_last(self.prefix + topic, count)
        expected = [(s, i) for s, _, i in self.topics[topic].events][-count:] if count else []
        assert self.seen(topic, got) == expected

    async def since(self, topic: str) -> None:
        second, limit = self.rng.randrange(32), self.rng.randint(1, 8)
        got = await self.store.read_since_time(self.prefix + topic, at(second), limit)
        expected = [(s, i) for s, t, i in self.topics[topic].events if t >= second][:limit]
        assert self.seen(topic, got) == expected

    async def trim(self, topic: str) -> None:
        state = self.topics[topic]
        keep_last = self.rng.randrange(25)
        older = self.rng.choice([None, None, self.rng.randrange(32)])
        cutoff = state.last_seq - keep_last + 1
        if older is not None:
            newer = [seq for seq, second, _ in state.events if second >= older]
            cutoff = max(cutoff, newer[0] if newer else state.last_seq + 1)
        kept = [e for e in state.events if e[0] >= cutoff]
        when = None if older is None else at(older)
        assert await self.store.trim(self.prefix + topic, keep_last, when) == len(
            state.events
        ) - len(kept)
        state.events = kept

    async def position(self, topic: str) -> None:
        state = self.topics[topic]
        position = await self.store.position(self.prefix + topic)
        assert position is not None
        assert (position.epoch, position.last_seq, position.first_seq) == (
            state.epoch,
            state.last_seq,
            state.first_seq(),
        )


@pytest.mark.parametrize("seed", range(8))
async def test_interleaved_operations_match_a_model(history_store: HistoryStore, seed: int) -> None:
    model = HistoryModel(history_store, random.Random(seed))
    for step in range(150):
        try:
            await model.step()
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, step {step}: {exc}") from exc
    for topic in model.topics:
        await model.position(topic)
        await model.read_last(topic)


# -- durability ------------------------------------------------------------------------------


async def test_a_new_instance_sees_the_same_history(durable_factory: StoreFactory) -> None:
    first = await durable_factory.open()
    a = await fill(first, "dur.a", 5)
    b = (await first.append([draft("dur.b", 1, key="k")]))[0].event
    await first.trim("dur.a", 3, None)
    await first.close()

    second = await durable_factory.open()
    position = await second.position("dur.a")
    assert position is not None
    assert (position.epoch, position.last_seq, position.first_seq) == (a[0].epoch, 5, 3)
    assert await second.read("dur.a", 0, 10) == a[2:]
    assert await second.read("dur.b", 0, 10) == [b]
    assert sorted(await second.topics()) == ["dur.a", "dur.b"]
    results = await second.append([draft("dur.a", 6), draft("dur.b", 2, key="k")])
    assert [(r.event.epoch, r.event.seq, r.duplicate) for r in results] == [
        (a[0].epoch, 6, False),
        (b.epoch, 1, True),
    ]
    assert results[1].event == b


async def test_memory_history_is_lost_with_the_instance() -> None:
    first = MemoryHistoryStore()
    epoch = (await first.append([draft("mem.a", 1)]))[0].event.epoch
    second = MemoryHistoryStore()
    assert await second.position("mem.a") is None
    assert (await second.append([draft("mem.a", 1)]))[0].event.epoch != epoch


async def test_memory_ring_is_bounded_per_topic() -> None:
    store = MemoryHistoryStore(max_events_per_topic=3, max_idempotency_keys=2)
    events = [r.event for r in await store.append([draft("ring.a", n) for n in range(5)])]
    assert await store.read("ring.a", 0, 10) == events[2:]
    position = await store.position("ring.a")
    assert position is not None and (position.last_seq, position.first_seq) == (5, 3)
    await store.append([draft("ring.b", n, key=f"k{n}") for n in range(3)])
    forgotten = (await store.append([draft("ring.b", 9, key="k0")]))[0]
    assert not forgotten.duplicate, "the oldest key was pushed out by the count bound"


async def test_two_postgres_nodes_share_one_gapless_sequence(
    postgres_factory: StoreFactory,
) -> None:
    node_a = await postgres_factory.open()
    node_b = await postgres_factory.open()

    async def publish(store: HistoryStore) -> list[list[AppendResult]]:
        calls = [
            store.append(
                [draft(t, n) for t in (("pg.x", "pg.y") if n % 2 else ("pg.y", "pg.x"))]
                + [draft("pg.x", 1000 + n)]
            )
            for n in range(40)
        ]
        return await asyncio.gather(*calls)

    results_a, results_b = await asyncio.gather(publish(node_a), publish(node_b))
    x = await node_a.read("pg.x", 0, 1000)
    y = await node_b.read("pg.y", 0, 1000)
    assert [e.seq for e in x] == list(range(1, 161))
    assert [e.seq for e in y] == list(range(1, 81))
    for results in (results_a, results_b):
        x_seqs = [r.event.seq for batch in results for r in batch if r.event.topic == "pg.x"]
        assert x_seqs == sorted(x_seqs), "one node's appends keep their call order"
    returned = {r.event.id: r.event for batch in results_a + results_b for r in batch}
    assert {e.id: e for e in x + y} == returned


async def test_close_lets_appends_already_called_commit(durable_factory: StoreFactory) -> None:
    store = await durable_factory.open()
    appends = [store.append([draft("cl.a", n)]) for n in range(1, 21)]
    results = await asyncio.gather(*appends, store.close())
    assert [r[0].event.seq for r in results[:-1] if r is not None] == list(range(1, 21))
    with pytest.raises(RuntimeError):
        await store.append([draft("cl.a", 21)])
    reopened = await durable_factory.open()
    assert [e.seq for e in await reopened.read("cl.a", 0, 100)] == list(range(1, 21))


# -- factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "detail"),
    [
        ("memory", MemoryHistoryStore, None),
        ("memory://", MemoryHistoryStore, None),
        ("memory://?max_events_per_topic=7", MemoryHistoryStore, 7),
        ("sqlite:///data/history.db", SqliteHistoryStore, Path("data/history.db")),
        ("sqlite:////var/lib/ac/h.db", SqliteHistoryStore, Path("/var/lib/ac/h.db")),
        ("sqlite:///h.db?synchronous=full", SqliteHistoryStore, "full"),
        ("postgresql://u@127.0.0.1/db", PostgresHistoryStore, "agentcast"),
        ("postgres://u@127.0.0.1/db?schema=hist", PostgresHistoryStore, "hist"),
    ],
)
def test_factory_builds_the_store_a_url_names(url: str, kind: type, detail: object) -> None:
    store = open_history_store(url, dedupe_window=33.0)
    assert isinstance(store, kind)
    assert getattr(store, "dedupe_window", None) == 33.0
    if isinstance(store, MemoryHistoryStore) and detail is not None:
        assert store.max_events_per_topic == detail
    if isinstance(store, SqliteHistoryStore):
        assert detail in (store.path, store.synchronous)
    if isinstance(store, PostgresHistoryStore):
        assert store.schema == detail and "schema" not in store.dsn


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://127.0.0.1?prefix=a:b",
        "memory://somewhere",
        "memory://?size=3",
        "sqlite://",
        "sqlite://relative.db",
        "sqlite:///",
        "sqlite:///h.db?synchronous=off",
        "sqlite:///h.db?journal=delete",
        "postgresql://u@127.0.0.1/db?schema=Bad-Name",
    ],
)
def test_factory_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        open_history_store(url, dedupe_window=120.0)
    assert refused.value.code == "bad_config"
    assert repr(url) in refused.value.message
