"""Several nodes in one process linked by an in-process broker: cross-node fan-out with
interest routing, durable order across publishing nodes, and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.wsclient import RawClient


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Three nodes on one bus, sharing one SQLite history for `acme.durable.>`."""
    bus = LocalBus()
    config = ServerConfig(
        port=0,
        http_port=0,
        history=f"sqlite:///{tmp_path}/shared.db",
        durable=(DurableRule("acme.durable.>"),),
        cluster_heartbeat=0.05,
    )
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(3):
            node = Node(config, broker=MemoryBroker(bus))
            await stack.enter_async_context(node)
            nodes.append(node)
        yield nodes


async def test_a_publish_on_one_node_reaches_subscribers_on_the_others(
    cluster: list[Node],
) -> None:
    a, b, c = cluster
    on_a = await RawClient.open(a.ws_url)
    on_b = await RawClient.open(b.ws_url)
    assert (await on_a.call("subscribe", topic="acme.>"))["ok"]
    assert (await on_b.call("subscribe", topic="acme.run.chat"))["ok"]
    publisher = await RawClient.open(c.ws_url)
    acks = [
        (await publisher.call("publish", topic="acme.run.chat", payload=n))["result"]
        for n in range(200)
    ]
    for client in (on_a, on_b):
        events = []
        for _ in range(210):  # on_a's `acme.>` also gets the presence events of `acme.run`
            event = await client.next_event()
            if event["topic"] == "acme.run.chat":
                events.append(event)
            if len(events) == 200:
                break
        assert [e["payload"] for e in events] == list(range(200))
        assert [e["seq"] for e in events] == [ack["seq"] for ack in acks]
        assert {e["epoch"] for e in events} == {acks[0]["epoch"]}


async def test_nodes_take_only_the_traffic_they_have_interest_in(cluster: list[Node]) -> None:
    a, b, c = cluster
    on_a = await RawClient.open(a.ws_url)
    await on_a.call("subscribe", topic="acme.only-a")
    publisher = await RawClient.open(c.ws_url)
    for n in range(20):
        await publisher.call("publish", topic="acme.only-a", payload=n)
    assert [(await on_a.next_event())["payload"] for _ in range(20)] == list(range(20))
    assert a.hub is not None and b.hub is not None
    assert a.hub.cluster is not None and b.hub.cluster is not None
    assert a.hub.cluster.received == 20
    assert b.hub.cluster.received == 0
    await on_a.call("unsubscribe", topic="acme.only-a")
    assert "acme.only-a" not in a.hub.cluster.interest


async def test_durable_order_holds_across_publishing_nodes(cluster: list[Node]) -> None:
    a, b, c = cluster
    watcher = await RawClient.open(a.ws_url)
    assert (await watcher.call("subscribe", topic="acme.durable.t"))["ok"]
    publishers = [await RawClient.open(n.ws_url) for n in (b, c)]

    async def publish_many(client: RawClient, tag: str) -> None:
        for n in range(150):
            reply = await client.call("publish", topic="acme.durable.t", payload=f"{tag}{n}")
            assert reply["ok"], reply

    await asyncio.gather(*(publish_many(p, tag) for p, tag in zip(publishers, "bc", strict=True)))
    events = [await watcher.next_event() for _ in range(300)]
    assert [e["seq"] for e in events] == list(range(1, 301))
    for tag in "bc":
        mine = [e["payload"] for e in events if e["payload"].startswith(tag)]
        assert mine == [f"{tag}{n}" for n in range(150)]


async def test_membership_and_degraded_readiness(cluster: list[Node]) -> None:
    a = cluster[0]
    assert a.hub is not None and a.hub.cluster is not None
    link = a.hub.cluster
    everyone = sorted(n.node_id for n in cluster)
    async with asyncio.timeout(10):  # woken by each membership change, no polling
        await link.wait_until(lambda: link.live_members() == everyone)
    assert isinstance(a.broker, MemoryBroker)
    a.broker.up = False
    link.on_health(False)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{a.http_url}/readyz") as resp:
            assert resp.status == 503
        a.broker.up = True
        link.on_health(True)
        async with http.get(f"{a.http_url}/readyz") as resp:
            assert resp.status == 200


async def test_a_consumer_group_with_members_on_two_nodes_delivers_each_event_once(
    cluster: list[Node],
) -> None:
    a, b, c = cluster
    for node in cluster:
        assert node.hub is not None and node.hub.cluster is not None
        link = node.hub.cluster
        async with asyncio.timeout(10):
            await link.wait_until(lambda link=link: len(link.ring.members) == 3)
    members = [await RawClient.open(node.ws_url) for node in (a, b)]
    for member in members:
        reply = await member.call(
            "subscribe", topic="acme.durable.jobs", group="workers", max_in_flight=4
        )
        assert reply["ok"], reply
    publisher = await RawClient.open(c.ws_url)
    for n in range(60):
        assert (await publisher.call("publish", topic="acme.durable.jobs", payload=n))["ok"]
    seen: dict[int, int] = {}
    done = asyncio.Event()

    async def work(index: int, client: RawClient) -> None:
        while True:
            message = await client.next_event_message()
            seq = message["event"]["seq"]
            assert seq not in seen, f"seq {seq} delivered twice"
            seen[seq] = index
            await client.send(cmd="ack", topic="acme.durable.jobs", group="workers", seq=seq)
            if len(seen) == 60:
                done.set()

    tasks = [asyncio.ensure_future(work(i, m)) for i, m in enumerate(members)]
    async with asyncio.timeout(30):
        await done.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(seen) == list(range(1, 61))
    assert set(seen.values()) == {0, 1}, "both members, on different nodes, got work"


async def test_group_members_follow_a_new_owner_when_the_owner_node_stops(
    tmp_path: Path,
) -> None:
    bus = LocalBus()
    config = ServerConfig(
        port=0,
        http_port=0,
        history=f"sqlite:///{tmp_path}/shared.db",
        durable=(DurableRule("acme.durable.>"),),
        cluster_heartbeat=0.05,
        member_timeout=0.5,
    )
    nodes = [Node(config, broker=MemoryBroker(bus)) for _ in range(3)]
    for node in nodes:
        await node.start()
    try:
        links = [n.hub.cluster for n in nodes if n.hub is not None and n.hub.cluster]
        async with asyncio.timeout(10):
            for link in links:
                await link.wait_until(lambda link=link: len(link.ring.members) == 3)
        owner_id = links[0].owner("acme")
        owner = next(n for n in nodes if n.node_id == owner_id)
        others = [n for n in nodes if n is not owner]
        member = await RawClient.open(others[0].ws_url)
        reply = await member.call("subscribe", topic="acme.durable.jobs", group="workers")
        assert reply["ok"] and reply["result"]["floor"] is None  # runs on the owner
        publisher = await RawClient.open(others[1].ws_url)
        assert (await publisher.call("publish", topic="acme.durable.jobs", payload=0))["ok"]
        first = await member.next_event_message()
        await member.send(
            cmd="ack", topic="acme.durable.jobs", group="workers", seq=first["event"]["seq"]
        )
        await owner.stop()
        survivor = others[0].hub
        assert survivor is not None and survivor.cluster is not None
        async with asyncio.timeout(10):
            await survivor.cluster.wait_until(
                lambda: owner_id not in survivor.cluster.ring.members  # type: ignore[union-attr]
            )
        assert (await publisher.call("publish", topic="acme.durable.jobs", payload=1))["ok"]
        async with asyncio.timeout(10):
            while True:  # seq 1 may come again if its ack was still on the way (at-least-once)
                message = await member.next_event_message()
                assert message["event"]["payload"] in (0, 1)
                if message["event"]["payload"] == 1:
                    break
    finally:
        for node in nodes:
            await node.stop()
