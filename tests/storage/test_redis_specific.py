"""What only the Redis history store has: many nodes on one server, its key layout, its
recovery paths, its URL, and its consumer-group store. The shared suite covers the rest."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from agentcast.config import ConfigError
from agentcast.storage.base import AppendResult, HistoryStore
from agentcast.storage.consumers import GroupProgress
from agentcast.storage.factory import consumer_store_for, open_history_store
from agentcast.storage.redis_consumers import RedisConsumerStore
from agentcast.storage.redis_store import (
    RedisHistoryStore,
    check_server,
    delete_prefix,
    key_pattern,
)
from tests.storage.conftest import StoreFactory
from tests.storage.redis_backend import REDIS_URL
from tests.storage.test_history_conformance import HistoryModel, draft


@pytest.fixture
async def redis_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory("redis", tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def scan(client: aioredis.Redis, pattern: str) -> set[bytes]:
    return {key async for key in client.scan_iter(match=pattern, count=500)}


# -- many nodes ------------------------------------------------------------------------------


async def test_nodes_appending_to_one_topic_share_one_gapless_sequence(
    redis_factory: StoreFactory,
) -> None:
    nodes = [await redis_factory.open() for _ in range(3)]

    async def publish(node: HistoryStore, rng: random.Random) -> list[list[AppendResult]]:
        calls = []
        for n in range(40):
            batch = [draft("rn.x", n) for _ in range(rng.randint(1, 4))]
            if n % 3 == 0:
                batch.insert(rng.randrange(len(batch) + 1), draft("rn.y", n))
            calls.append(node.append(batch))
        return await asyncio.gather(*calls)

    per_node = await asyncio.gather(
        *(publish(node, random.Random(i)) for i, node in enumerate(nodes))
    )
    returned = [r.event for results in per_node for batch in results for r in batch]
    for topic in ("rn.x", "rn.y"):
        mine = [e for e in returned if e.topic == topic]
        stored = await nodes[0].read(topic, 0, 10_000)
        assert [e.seq for e in stored] == list(range(1, len(mine) + 1))
        assert sorted(stored, key=lambda e: e.id) == sorted(mine, key=lambda e: e.id)
        assert len({e.epoch for e in stored}) == 1
    for results in per_node:
        x_seqs = [r.event.seq for batch in results for r in batch if r.event.topic == "rn.x"]
        assert x_seqs == sorted(x_seqs), "one node's appends keep their call order"


async def test_a_key_stored_by_one_node_deduplicates_on_another(
    redis_factory: StoreFactory,
) -> None:
    node_a = await redis_factory.open()
    node_b = await redis_factory.open()
    original = (await node_a.append([draft("rk.a", 1, key="k")]))[0]
    retry = (await node_b.append([draft("rk.a", 1, key="k")]))[0]
    assert retry.duplicate and retry.event == original.event
    epoch = await node_b.reset("rk.a")
    fresh = (await node_a.append([draft("rk.a", 2, key="k")]))[0]
    assert not fresh.duplicate and (fresh.event.epoch, fresh.event.seq) == (epoch, 1)


async def test_a_reopened_store_sees_the_same_positions(redis_factory: StoreFactory) -> None:
    first = await redis_factory.open()
    for index, topic in enumerate(["ro.a", "ro.b", "ro.c", "ro.d"]):
        await first.append([draft(topic, n) for n in range(1, 6 + index)])
    await first.trim("ro.b", 2, None)
    await first.trim("ro.c", 0, None)
    await first.reset("ro.d")
    topics = await first.topics()
    before = {topic: await first.position(topic) for topic in topics}
    last = await first.read_last("ro.a", 3)
    await first.close()

    second = await redis_factory.open()
    assert await second.topics() == topics == ["ro.a", "ro.b", "ro.c", "ro.d"]
    assert {topic: await second.position(topic) for topic in topics} == before
    assert await second.read_last("ro.a", 3) == last
    results = await second.append([draft("ro.a", 9), draft("ro.c", 9), draft("ro.d", 9)])
    for result in results:
        position = before[result.event.topic]
        assert position is not None
        assert (result.event.epoch, result.event.seq) == (position.epoch, position.last_seq + 1)


async def test_a_cancelled_append_still_commits_before_the_next(
    redis_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await redis_factory.open()
    assert isinstance(store, RedisHistoryStore)
    sent = asyncio.Event()
    run_appends = store._run_appends

    async def spy(*args: object) -> object:
        sent.set()
        return await run_appends(*args)

    monkeypatch.setattr(store, "_run_appends", spy)
    caller = asyncio.create_task(store.append([draft("rc.a", 1)]))
    await sent.wait()
    caller.cancel()
    later = await store.append([draft("rc.a", 2)])
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert later[0].event.seq == 2
    assert [e.seq for e in await store.read("rc.a", 0, 10)] == [1, 2]


# -- key layout ------------------------------------------------------------------------------


async def test_keys_live_under_the_prefix_and_cleanup_removes_them(
    redis_factory: StoreFactory, client: aioredis.Redis
) -> None:
    prefix = redis_factory.schema
    store = await redis_factory.open()
    topics = ["kl.a", "kl.b.c", "kl:colon"]
    for topic in topics:
        await store.append([draft(topic, 1, key="k"), draft(topic, 2)])
    await store.trim("kl.a", 0, None)
    await store.reset("kl.new")

    everything = await scan(client, f"*{prefix}*")
    assert everything == await scan(client, key_pattern(prefix))
    expected = {f"{{{prefix}}}:topics".encode()}
    for topic in [*topics, "kl.new"]:
        suffixes = ["meta"] if topic == "kl.new" else ["meta", "events", "keys", "expiry"]
        keys = {f"{{{prefix}:{topic}}}:{suffix}".encode() for suffix in suffixes}
        assert len({key_slot(key) for key in keys}) == 1, "a topic's keys share one slot"
        expected |= keys
    assert everything == expected

    await redis_factory.close_all()  # closes the store, then the backend's cleanup
    assert await scan(client, f"*{prefix}*") == set()


async def test_prefixes_are_separate(client: aioredis.Redis) -> None:
    base = f"agentcast_test_{uuid.uuid4().hex[:12]}"
    stores = [RedisHistoryStore(REDIS_URL, prefix=p) for p in (base, base + "_2", base + ".x")]
    try:
        for n, store in enumerate(stores):
            await store.open()
            await store.append([draft("same.topic", i) for i in range(n + 1)])
        for n, store in enumerate(stores):
            position = await store.position("same.topic")
            assert position is not None and position.last_seq == n + 1
            assert await store.topics() == ["same.topic"]
        await stores[0].close()
        assert await delete_prefix(client, base) > 0
        assert await scan(client, key_pattern(base)) == set()
        assert await stores[1].position("same.topic") is not None
        assert await stores[2].position("same.topic") is not None
    finally:
        for store in stores:
            await store.close()
            await delete_prefix(client, store.prefix)


# -- recovery --------------------------------------------------------------------------------


async def test_a_topic_that_lost_its_meta_starts_a_new_epoch(
    redis_factory: StoreFactory, client: aioredis.Redis
) -> None:
    store = await redis_factory.open()
    old = [r.event for r in await store.append([draft("lm.a", n, key=f"k{n}") for n in (1, 2)])]
    await client.delete(f"{{{redis_factory.schema}:lm.a}}:meta")
    assert await store.position("lm.a") is None
    again = (await store.append([draft("lm.a", 3, key="k1")]))[0]
    assert not again.duplicate, "keys of a lost epoch do not match"
    assert again.event.seq == 1 and again.event.epoch != old[0].epoch
    assert await store.read("lm.a", 0, 10) == [again.event]


async def test_a_wiped_prefix_starts_over_and_is_listed_again(
    redis_factory: StoreFactory, client: aioredis.Redis
) -> None:
    store = await redis_factory.open()
    first = (await store.append([draft("wp.a", 1)]))[0].event
    assert await delete_prefix(client, redis_factory.schema) > 0
    assert await store.topics() == []
    assert await store.position("wp.a") is None
    again = (await store.append([draft("wp.a", 2)]))[0].event
    assert again.seq == 1 and again.epoch != first.epoch
    assert await store.topics() == ["wp.a"]


async def test_a_lost_script_is_loaded_again(redis_factory: StoreFactory) -> None:
    store = await redis_factory.open()
    assert isinstance(store, RedisHistoryStore)
    real = store._scripts["append"].sha
    for script in store._scripts.values():
        script.sha = "0" * 40  # what Redis answers after a restart or SCRIPT FLUSH
    results = await store.append([draft("ls.a", 1), draft("ls.b", 1)])
    assert [r.event.seq for r in results] == [1, 1]
    assert store._scripts["append"].sha == real
    assert len(await store.read_since_time("ls.a", "2000-01-01T00:00:00Z", 10)) == 1
    assert await store.trim("ls.a", 0, None) == 1
    assert await store.reset("ls.b") != results[1].event.epoch


@pytest.mark.parametrize(("seed", "budget"), [(0, 1), (1, 2), (2, 3), (3, 5)])
async def test_scans_continue_across_script_calls(
    redis_factory: StoreFactory, seed: int, budget: int
) -> None:
    """With a tiny scan budget, reads by time and age trims over events whose times are out
    of order take many script calls; they must still match the model."""
    store = RedisHistoryStore(
        REDIS_URL, prefix=redis_factory.schema, clock=redis_factory.clock, scan_budget=budget
    )
    await store.open()
    redis_factory.opened.append(store)
    model = HistoryModel(store, random.Random(seed))
    for step in range(150):
        try:
            await model.step()
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, step {step}: {exc}") from exc


# -- configuration ---------------------------------------------------------------------------


def test_the_factory_builds_a_redis_store() -> None:
    store = open_history_store(
        "redis://127.0.0.1:6379/3?prefix=hist&socket_timeout=2", dedupe_window=7
    )
    assert isinstance(store, RedisHistoryStore)
    assert (store.prefix, store.dedupe_window) == ("hist", 7)
    assert store.url == "redis://127.0.0.1:6379/3?socket_timeout=2"
    default = open_history_store("rediss://127.0.0.1", dedupe_window=1)
    assert isinstance(default, RedisHistoryStore) and default.prefix == "agentcast"
    assert isinstance(consumer_store_for(store), RedisConsumerStore)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1?prefix=a:b", "redis://127.0.0.1?prefix=", "redis://h?prefix=x*"]
)
def test_the_factory_refuses_a_bad_prefix(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        open_history_store(url, dedupe_window=1)
    assert refused.value.code == "bad_config" and repr(url) in refused.value.message


def test_servers_that_cannot_hold_history_are_refused() -> None:
    check_server({"redis_version": "7.0.15"}, {"maxmemory_policy": "noeviction"})
    check_server({"redis_version": "7.2.4"}, {"maxmemory_policy": "volatile-lru"})
    with pytest.raises(ConfigError, match="Redis 7"):
        check_server({"redis_version": "6.2.14"}, {"maxmemory_policy": "noeviction"})
    with pytest.raises(ConfigError, match="allkeys-lru"):
        check_server({"redis_version": "7.2.4"}, {"maxmemory_policy": "allkeys-lru"})


async def test_the_local_server_is_accepted(client: aioredis.Redis) -> None:
    check_server(await client.info("server"), await client.info("memory"))


# -- consumer groups -------------------------------------------------------------------------


async def test_group_progress_survives_a_new_instance(
    redis_factory: StoreFactory, client: aioredis.Redis
) -> None:
    history = await redis_factory.open()
    assert isinstance(history, RedisHistoryStore)
    first = consumer_store_for(history)
    await first.open()
    try:
        assert await first.load("cg.a", "workers") is None
        await first.save("cg.a", "workers", GroupProgress("e1", 5, frozenset({7, 9})))
        await first.save("cg.a", "audit", GroupProgress("e1", 2))
        await first.save("cg.a", "workers", GroupProgress("e1", 9, frozenset({11})))
    finally:
        await first.close()
    second = RedisConsumerStore(REDIS_URL, redis_factory.schema)
    await second.open()
    try:
        assert await second.load("cg.a", "workers") == GroupProgress("e1", 9, frozenset({11}))
        assert await second.load("cg.a", "audit") == GroupProgress("e1", 2)
        assert await second.load("cg.b", "workers") is None
    finally:
        await second.close()
    assert await scan(client, key_pattern(redis_factory.schema)) == {
        f"{{{redis_factory.schema}:cg.a}}:groups".encode()
    }
    with pytest.raises(RuntimeError):
        await second.load("cg.a", "workers")
