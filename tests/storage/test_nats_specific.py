"""What only the JetStream history store has: several nodes on one stream, markers, message
ids, subject escaping, seeks in sparse subjects, its URL, and its clean-up. The shared suite
covers the rest."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, NotFoundError

from agentcast.config import ConfigError
from agentcast.storage.base import AppendResult, HistoryStore, StoredEvent
from agentcast.storage.factory import open_history_store
from agentcast.storage.nats_store import NatsHistoryStore, subject_token, topic_of_token
from tests.storage.conftest import StoreFactory
from tests.storage.nats_backend import NATS_URL, stream_name
from tests.storage.test_history_conformance import at, draft, fill


@pytest.fixture
async def nats_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory("nats", tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def nc() -> AsyncIterator[Any]:
    client = await nats.connect(NATS_URL)
    try:
        yield client
    finally:
        await client.close()


def nats_store(store: HistoryStore) -> NatsHistoryStore:
    assert isinstance(store, NatsHistoryStore)
    return store


# -- subjects --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9_=-]+")


@given(st.text(max_size=40))
def test_subject_tokens_round_trip_any_topic(topic: str) -> None:
    tokens = subject_token(topic)
    assert all(_TOKEN.fullmatch(token) for token in tokens.split("."))
    assert topic_of_token(tokens) == topic


def test_subject_tokens_escape_only_what_needs_it() -> None:
    assert subject_token("acme.run-42.agent_x") == "acme.run-42.agent_x"
    assert subject_token("a.u:1@h~=") == "a.u=3A1=40h=7E=3D"
    assert subject_token("a..*.>. ") == "a.=.=2A.=3E.=20"
    assert subject_token("é") == "=C3=A9"


async def test_topics_with_escaped_characters(nats_factory: StoreFactory) -> None:
    store = await nats_factory.open()
    names = ["acme.user:42.inbox", "acme.a@b~c=d", "acme.user=3A42.inbox"]
    for name in names:
        await store.append([draft(name, 1), draft(name, 2)])
    assert await store.topics() == sorted(names)
    for name in names:
        assert [e.topic for e in await store.read(name, 0, 10)] == [name, name]


# -- several nodes ---------------------------------------------------------------------------


async def test_two_nodes_share_one_gapless_sequence(nats_factory: StoreFactory) -> None:
    node_a = await nats_factory.open()
    node_b = await nats_factory.open()

    async def publish(store: HistoryStore) -> list[list[AppendResult]]:
        calls = [
            store.append(
                [draft(t, n) for t in (("nt.x", "nt.y") if n % 2 else ("nt.y", "nt.x"))]
                + [draft("nt.x", 1000 + n)]
            )
            for n in range(40)
        ]
        return await asyncio.gather(*calls)

    results_a, results_b = await asyncio.gather(publish(node_a), publish(node_b))
    x = await node_a.read("nt.x", 0, 1000)
    y = await node_b.read("nt.y", 0, 1000)
    assert [e.seq for e in x] == list(range(1, 161))
    assert [e.seq for e in y] == list(range(1, 81))
    for results in (results_a, results_b):
        x_seqs = [r.event.seq for batch in results for r in batch if r.event.topic == "nt.x"]
        assert x_seqs == sorted(x_seqs), "one node's appends keep their call order"
    returned = {r.event.id: r.event for batch in results_a + results_b for r in batch}
    assert {e.id: e for e in x + y} == returned
    assert len({e.epoch for e in x}) == 1


async def test_two_nodes_racing_one_key_store_it_once(nats_factory: StoreFactory) -> None:
    node_a = await nats_factory.open()
    node_b = await nats_factory.open()
    keys = [f"k{n}" for n in range(30)]
    drafts = {key: draft("race.a", n, key=key) for n, key in enumerate(keys)}
    results = await asyncio.gather(
        *(node.append([drafts[key]]) for key in keys for node in (node_a, node_b))
    )
    stored = await node_a.read("race.a", 0, 100)
    assert [e.seq for e in stored] == list(range(1, 31))
    assert sorted(e.id for e in stored) == sorted(d.id for d in drafts.values())
    for pair in zip(results[::2], results[1::2], strict=True):
        first, second = pair[0][0], pair[1][0]
        assert first.event == second.event
        assert sorted([first.duplicate, second.duplicate]) == [False, True]


async def test_a_node_with_a_stale_view_follows_a_reset(nats_factory: StoreFactory) -> None:
    node_a = await nats_factory.open()
    node_b = await nats_factory.open()
    old = await fill(node_a, "st.a", 3)  # node A now knows the subject's last message
    epoch = await node_b.reset("st.a")
    result = (await node_a.append([draft("st.a", 4)]))[0].event
    assert (result.epoch, result.seq) == (epoch, 1) and epoch != old[0].epoch
    assert await node_b.read("st.a", 0, 10) == [result]
    assert await node_b.trim("st.a", 0, None) == 1
    after_trim = (await node_a.append([draft("st.a", 5)]))[0].event
    assert (after_trim.epoch, after_trim.seq) == (epoch, 2)


async def test_a_reopened_store_sees_the_same_positions(nats_factory: StoreFactory) -> None:
    first = await nats_factory.open()
    await fill(first, "ro.trimmed", 5)
    assert await first.trim("ro.trimmed", 0, None) == 5  # leaves only a marker
    await fill(first, "ro.reset", 4)
    epoch = await first.reset("ro.reset")
    await fill(first, "ro.kept", 6)
    await first.trim("ro.kept", 2, None)
    topics = ["ro.kept", "ro.reset", "ro.trimmed"]
    before = [await first.position(topic) for topic in topics]
    await first.close()

    second = await nats_factory.open()
    assert [await second.position(topic) for topic in topics] == before
    assert before[1] is not None and (before[1].epoch, before[1].last_seq) == (epoch, 0)
    assert before[2] is not None and (before[2].last_seq, before[2].first_seq) == (5, 6)
    assert await second.topics() == topics
    assert [r.event.seq for r in await second.append([draft(t, 9) for t in topics])] == [7, 1, 6]


# -- message ids -----------------------------------------------------------------------------


async def test_a_lost_key_record_is_recovered_from_the_message_id(
    nats_factory: StoreFactory, nc: Any
) -> None:
    store = await nats_factory.open()
    original = (await store.append([draft("lk.a", 1, key="k"), draft("lk.a", 2)]))[0].event
    kv = await nc.jetstream().key_value(f"{stream_name(nats_factory)}-keys")
    names = await kv.keys()
    assert len(names) == 1
    await kv.purge(names[0])  # as if the node died between the publish and the record
    with pytest.raises(KeyNotFoundError):
        await kv.get(names[0])

    retry = (await store.append([draft("lk.a", 3, key="k")]))[0]
    assert retry.duplicate and retry.event == original
    assert [e.seq for e in await store.read("lk.a", 0, 10)] == [1, 2]
    assert (await kv.get(names[0])).value, "the record is written again"


async def test_a_lost_acknowledgement_is_not_stored_twice(nats_factory: StoreFactory) -> None:
    store = nats_store(await nats_factory.open())
    js = store._jsc()
    real_publish = js.publish
    calls: list[str] = []

    async def publish_then_lose_the_first_ack(subject: str, *args: Any, **kwargs: Any) -> Any:
        if not subject.startswith(store.subject_prefix):  # the key record
            return await real_publish(subject, *args, **kwargs)
        first = subject not in calls  # per subject: the two topics publish concurrently
        calls.append(subject)
        ack = await real_publish(subject, *args, **kwargs)
        if first:
            raise NatsTimeoutError
        return ack

    js.publish = publish_then_lose_the_first_ack  # type: ignore[method-assign]
    try:
        results = await store.append([draft("la.a", 1), draft("la.b", 1, key="k")])
    finally:
        js.publish = real_publish  # type: ignore[method-assign]
    assert sorted(calls) == sorted([store._subject("la.a"), store._subject("la.b")] * 2)
    assert [(r.event.seq, r.duplicate) for r in results] == [(1, False), (1, False)]
    for topic, result in zip(("la.a", "la.b"), results, strict=True):
        assert await store.read(topic, 0, 10) == [result.event]
    assert seqs_of(await store.append([draft("la.a", 2), draft("la.b", 2, key="k")])) == [2, 1]


def seqs_of(results: list[AppendResult]) -> list[int]:
    return [r.event.seq for r in results]


# -- reads in a shared stream ----------------------------------------------------------------


async def test_reads_find_positions_in_a_sparse_subject(nats_factory: StoreFactory) -> None:
    store = await nats_factory.open()
    rng = random.Random(7)
    rare: list[StoredEvent] = []
    for n in range(1, 61):
        noise = [draft(f"sp.noise{rng.randrange(3)}", n) for _ in range(rng.randrange(12))]
        second = rng.randrange(100)
        batch = [*noise, draft("sp.rare", n, second=second)]
        rng.shuffle(batch)
        results = await store.append(batch)
        rare += [r.event for r in results if r.event.topic == "sp.rare"]
    assert await store.trim("sp.rare", 45, None) == 15
    kept = rare[15:]
    for after in range(0, 62):
        for limit in (1, 3, 5, 50):
            expected = [e for e in kept if e.seq > after][:limit]
            assert await store.read("sp.rare", after, limit) == expected, (after, limit)
    assert await store.read_last("sp.rare", 7) == kept[-7:]
    for second in (0, 33, 99):
        matching = [e for e in kept if e.time >= at(second)]
        assert await store.read_since_time("sp.rare", at(second), 4) == matching[:4]


async def test_a_seek_in_a_dense_subject_takes_few_probes(nats_factory: StoreFactory) -> None:
    store = nats_store(await nats_factory.open())
    events = await fill(store, "ds.a", 400)
    real_next = store._next
    probes: list[int] = []

    async def counted(subject: str, stream_seq: int) -> Any:
        probes.append(stream_seq)
        return await real_next(subject, stream_seq)

    store._next = counted  # type: ignore[method-assign]
    for after in (17, 200, 333, 398):
        probes.clear()
        assert await store.read("ds.a", after, 1) == [events[after]]
        assert len(probes) <= 3, (after, probes)  # the first message, then interpolation


async def test_reads_leave_no_consumer_behind(nats_factory: StoreFactory, nc: Any) -> None:
    store = await nats_factory.open()
    events = await fill(store, "rc.a", 300)
    assert await store.read("rc.a", 0, 1000) == events
    assert await store.read_since_time("rc.a", at(150), 1000) == events[149:]
    assert await store.trim("rc.a", 1000, at(10)) == 9
    info = await nc.jetstream().stream_info(stream_name(nats_factory))
    assert info.state.consumer_count == 0


# -- clean-up and URLs -----------------------------------------------------------------------


async def test_cleanup_deletes_the_stream_and_the_key_bucket(tmp_path: Path, nc: Any) -> None:
    factory = StoreFactory("nats", tmp_path)
    store = await factory.open()
    await store.append([draft("cu.a", 1, key="k")])
    js = nc.jetstream()
    stream = stream_name(factory)
    names = [stream, f"KV_{stream}-keys"]
    for name in names:
        assert (await js.stream_info(name)).state.messages == 1
    await factory.close_all()
    for name in names:
        with pytest.raises(NotFoundError):
            await js.stream_info(name)


def test_factory_builds_a_nats_store() -> None:
    store = open_history_store("nats://127.0.0.1:4222?stream=HIST&replicas=3", dedupe_window=9.0)
    assert isinstance(store, NatsHistoryStore)
    assert (store.url, store.stream, store.replicas) == ("nats://127.0.0.1:4222", "HIST", 3)
    assert store.dedupe_window == 9.0 and store.keys_bucket == "HIST-keys"
    default = open_history_store("nats://u:p@10.0.0.1:4222,10.0.0.2:4222", dedupe_window=1.0)
    assert isinstance(default, NatsHistoryStore)
    assert (default.url, default.stream) == ("nats://u:p@10.0.0.1:4222,10.0.0.2:4222", "AGENTCAST")


@pytest.mark.parametrize(
    "url",
    [
        "nats://",
        "nats://127.0.0.1?stream=a.b",
        "nats://127.0.0.1?replicas=0",
        "nats://127.0.0.1?subjects=x",
    ],
)
def test_factory_refuses_bad_nats_urls(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        open_history_store(url, dedupe_window=120.0)
    assert repr(url) in refused.value.message
