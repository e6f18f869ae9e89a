"""Direct addressing: inbox publications go only to the node holding the inbox, through a
routing table replicated by route messages, and are refused with ``no_route`` otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import orjson
import pytest

from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.config import ServerConfig
from agentcast.hub.cluster import ClusterLink
from agentcast.hub.config import HubConfig
from agentcast.hub.dispatch import handle_frame
from agentcast.hub.hub import Hub
from agentcast.hub.routes import (
    ROUTE_BATCH,
    RouteTable,
    decode_routes,
    encode_routes,
    is_inbox,
)
from agentcast.node import Node
from tests.fakes import FakeSink
from tests.wsclient import RawClient

# -- the table on its own ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("topic", "inbox"),
    [
        ("acme.inbox.x", True),
        ("acme.inbox.agent-7", True),
        ("acme.inbox.*", False),
        ("acme.inbox.>", False),
        ("acme.inbox", False),
        ("acme.inbox.x.replies", False),
        ("acme.run.x", False),
        ("inbox.x.y", False),
        ("acme.inboxes.x", False),
        ("acme.*.x", False),
    ],
)
def test_what_is_an_inbox(topic: str, inbox: bool) -> None:
    assert is_inbox(topic) is inbox


def test_entries_live_until_withdrawn_expired_or_their_node_leaves() -> None:
    clock = Clock()
    table = RouteTable("a", ttl=30.0, clock=clock)
    table.hold("acme.inbox.mine")
    table.apply("b", ["acme.inbox.x", "acme.inbox.y"], [], ttl=10.0)
    table.apply("c", ["acme.inbox.x"], [], ttl=20.0)
    assert table.holders("acme.inbox.mine") == ["a"]
    assert table.remote_holders("acme.inbox.mine") == []
    assert sorted(table.holders("acme.inbox.x")) == ["b", "c"]

    table.apply("b", [], ["acme.inbox.y"], ttl=10.0)
    assert table.holders("acme.inbox.y") == []
    clock.now += 10.0  # b's announcement expires, c's does not
    assert table.holders("acme.inbox.x") == ["c"]
    table.apply("b", ["acme.inbox.x"], [], ttl=10.0)  # refreshed
    assert sorted(table.holders("acme.inbox.x")) == ["b", "c"]
    assert table.drop_node("c") == 1
    assert table.holders("acme.inbox.x") == ["b"]
    table.apply("a", ["acme.inbox.z"], [], ttl=10.0)  # our own announcement echoed: ignored
    assert table.holders("acme.inbox.z") == []


def test_local_changes_are_taken_once() -> None:
    table = RouteTable("a")
    table.hold("acme.inbox.x")
    table.hold("acme.inbox.y")
    table.release("acme.inbox.y")
    assert table.take_changes() == (["acme.inbox.x"], ["acme.inbox.y"])
    assert table.take_changes() == ([], [])
    assert table.local == {"acme.inbox.x"}


def test_the_table_is_bounded_and_swept() -> None:
    clock = Clock()
    table = RouteTable("a", max_routes=3, clock=clock)
    for n in range(5):
        table.apply("b", [f"acme.inbox.c{n}"], [], ttl=5.0)
        clock.now += 1.0
    assert len(table) == 3
    assert table.evicted == 2
    assert table.holders("acme.inbox.c0") == []  # the least recently announced went first
    clock.now += 2.5  # c2 (announced at +2) expired; c3 and c4 have not
    assert table.sweep() == 1
    assert len(table) == 2
    with pytest.raises(ValueError):
        RouteTable("a", ttl=0)


def test_route_messages_round_trip_in_batches_and_reject_garbage() -> None:
    added = [f"acme.inbox.c{n}" for n in range(ROUTE_BATCH + 5)]
    messages = encode_routes(added, ["acme.inbox.gone"], 12.5)
    assert len(messages) == 3
    decoded = [decode_routes(m) for m in messages]
    assert decoded[0] == ([], ["acme.inbox.gone"], 12.5)
    assert [a for d in decoded for a in d[0]] == added
    assert encode_routes([], [], 1.0) == []
    skipped = orjson.dumps({"ttl": 1, "add": ["acme.run.x", 3, "acme.inbox.ok"], "del": []})
    assert decode_routes(skipped) == (["acme.inbox.ok"], [], 1.0)
    for bad in (b"{", b"[]", b'{"ttl": 0, "add": [], "del": []}', b'{"ttl": 1, "add": {}}'):
        with pytest.raises(ValueError):
            decode_routes(bad)


# -- three nodes with real clients ---------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[list[Node]]:
    bus = LocalBus()
    config = ServerConfig(port=0, http_port=0, cluster_heartbeat=0.05)
    async with AsyncExitStack() as stack:
        nodes = []
        for name in "abc":
            node = Node(replace(config, node_id=name), broker=MemoryBroker(bus))
            await stack.enter_async_context(node)
            nodes.append(node)
        for node in nodes:
            link = link_of(node)
            await settle(link, lambda link=link: len(link.live_members()) == 3)
        yield nodes


def link_of(node: Node) -> ClusterLink:
    assert node.hub is not None and node.hub.cluster is not None
    return node.hub.cluster


async def settle(link: ClusterLink, predicate: Callable[[], bool]) -> None:
    """Wait, at most 10 s, until ``predicate`` holds after some change of ``link``'s state."""
    async with asyncio.timeout(10):
        await link.wait_until(predicate)


async def test_an_inbox_publish_goes_only_to_the_node_holding_it(cluster: list[Node]) -> None:
    a, b, c = cluster
    x = await RawClient.open(a.ws_url, "x")
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    tap_on_b = await RawClient.open(b.ws_url, "tap")
    assert (await tap_on_b.call("subscribe", topic="acme.>"))["ok"]
    on_c = link_of(c)
    await settle(on_c, lambda: on_c.routes.holders("acme.inbox.x") == ["a"])

    publisher = await RawClient.open(c.ws_url, "publisher")
    reply = await publisher.call("publish", topic="acme.inbox.x", payload={"hi": 1})
    assert reply["ok"], reply
    event = await x.next_event()
    assert (event["topic"], event["payload"]) == ("acme.inbox.x", {"hi": 1})
    assert link_of(a).direct_received == 1
    assert on_c.routed == 1
    # Had the inbox event been broadcast, b would have seen it before this later event.
    assert (await publisher.call("publish", topic="acme.marker", payload="m"))["ok"]
    assert (await tap_on_b.next_event())["topic"] == "acme.marker"
    assert link_of(b).direct_received == 0
    assert link_of(b).received == 1  # the marker only
    assert "acme.inbox.x" not in a.broker.interests  # type: ignore[union-attr]


async def test_a_disconnected_client_has_no_route(cluster: list[Node]) -> None:
    a, _, c = cluster
    x = await RawClient.open(a.ws_url, "x")
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    on_c = link_of(c)
    await settle(on_c, lambda: on_c.routes.holders("acme.inbox.x") == ["a"])
    publisher = await RawClient.open(c.ws_url, "publisher")
    assert (await publisher.call("publish", topic="acme.inbox.x", payload=1))["ok"]
    assert (await x.next_event())["payload"] == 1

    await x.close()
    await settle(on_c, lambda: on_c.routes.holders("acme.inbox.x") == [])
    reply = await publisher.call("publish", topic="acme.inbox.x", payload=2)
    assert not reply["ok"]
    assert reply["error"]["code"] == "no_route"
    other = await publisher.call("publish", topic="acme.inbox.nobody", payload=3)
    assert other["error"]["code"] == "no_route"


async def test_an_inbox_on_the_publishing_node_needs_no_broker(cluster: list[Node]) -> None:
    a = cluster[0]
    x = await RawClient.open(a.ws_url, "x")
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    publisher = await RawClient.open(a.ws_url, "publisher")
    assert (await publisher.call("publish", topic="acme.inbox.x", payload="local"))["ok"]
    assert (await x.next_event())["payload"] == "local"
    assert link_of(a).routed == 0


async def test_a_node_that_joins_learns_the_routes_held_elsewhere(cluster: list[Node]) -> None:
    a = cluster[0]
    x = await RawClient.open(a.ws_url, "x")
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    assert isinstance(a.broker, MemoryBroker)
    async with Node(replace(a.config, node_id="d"), broker=MemoryBroker(a.broker.bus)) as d:
        on_d = link_of(d)
        await settle(on_d, lambda: on_d.routes.holders("acme.inbox.x") == ["a"])
        publisher = await RawClient.open(d.ws_url, "publisher")
        assert (await publisher.call("publish", topic="acme.inbox.x", payload="late"))["ok"]
        assert (await x.next_event())["payload"] == "late"
        await publisher.close()


# -- hubs linked by hand, with an injected clock -------------------------------------------


class RecordingSink(FakeSink):
    def __init__(self) -> None:
        super().__init__()
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.wrote.set()


class HubClient:
    """Commands straight into a hub's dispatcher; replies read from a recording sink."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.sink = RecordingSink()
        self.conn = hub.connect(self.sink)
        self.hub = hub
        self.ids = iter(range(1, 1_000_000))
        self.name = name

    async def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        handle_frame(self.conn, orjson.dumps({"id": command_id, "cmd": cmd, **fields}))
        async with asyncio.timeout(10):
            while True:
                for message in self.sink.messages():
                    if message.get("type") == "reply" and message.get("id") == command_id:
                        return message
                self.sink.wrote.clear()
                await self.sink.wrote.wait()

    def close(self) -> None:
        self.hub.disconnected(self.conn)


@pytest.fixture
async def linked() -> AsyncIterator[tuple[Clock, list[ClusterLink]]]:
    """Three hubs linked on one bus whose links tick only when a test says so."""
    clock = Clock()
    bus = LocalBus()
    loop = asyncio.get_running_loop()
    links = []
    for name in "abc":
        hub = Hub(HubConfig(), loop.call_soon, node_id=name, clock=clock)
        link = hub.cluster = ClusterLink(
            hub, MemoryBroker(bus), clock=clock, member_timeout=100.0, route_ttl=30.0
        )
        await link.broker.start(name, link)
        links.append(link)
    for link in links:
        link.tick()
    for link in links:
        await settle(link, lambda link=link: len(link.live_members()) == 3)
        link.tick()
    yield clock, links
    for link in links:
        await link.broker.close()
        await link.hub.cancel_tasks()


async def test_a_route_whose_withdrawal_was_lost_expires(
    linked: tuple[Clock, list[ClusterLink]],
) -> None:
    clock, (a, _, c) = linked
    x = HubClient(a.hub, "x")
    assert (await x.call("hello", client="x"))["ok"]
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    await settle(c, lambda: c.routes.holders("acme.inbox.x") == ["a"])
    publisher = HubClient(c.hub, "publisher")
    assert (await publisher.call("hello", client="publisher"))["ok"]

    assert isinstance(a.broker, MemoryBroker)
    a.broker.up = False  # a's withdrawal (and every later refresh) never reaches c
    x.close()
    assert a.routes.local == set()
    clock.now += 29.0
    assert (await publisher.call("publish", topic="acme.inbox.x", payload=1))["ok"]
    clock.now += 1.0  # 30 s after the last announcement
    reply = await publisher.call("publish", topic="acme.inbox.x", payload=2)
    assert reply["error"]["code"] == "no_route"
    c.tick()
    assert len(c.routes) == 0  # swept


async def test_routes_are_announced_again_before_they_expire(
    linked: tuple[Clock, list[ClusterLink]],
) -> None:
    clock, (a, _, c) = linked
    x = HubClient(a.hub, "x")
    assert (await x.call("hello", client="x"))["ok"]
    assert (await x.call("subscribe", topic="acme.inbox.x"))["ok"]
    await settle(c, lambda: c.routes.holders("acme.inbox.x") == ["a"])
    for _ in range(6):  # a minute, in steps of a third of the ttl: every step re-announces
        clock.now += 10.0
        for link in linked[1]:
            link.tick()
        await settle(c, lambda: c.routes.holders("acme.inbox.x") == ["a"])
    publisher = HubClient(c.hub, "publisher")
    assert (await publisher.call("hello", client="publisher"))["ok"]
    assert (await publisher.call("publish", topic="acme.inbox.x", payload=1))["ok"]
