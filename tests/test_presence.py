"""Presence: who is connected to a session, aggregated by the tenant's ring owner, with join
and leave events on ``<tenant>.<session>.presence``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import pytest

from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.config import ServerConfig
from agentcast.errors import InvalidTopic, Unavailable
from agentcast.hub.cluster import ClusterLink
from agentcast.hub.presence import LocalPresence, PresenceBoard, PresenceService, session_of
from agentcast.node import Node
from agentcast.protocol.commands import PresenceQuery, decode_command
from tests.fakes import FakeSink, make_hub
from tests.wsclient import RawClient

# -- pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "session"),
    [
        ("acme.run-42", "acme.run-42"),
        ("acme.run-42.>", "acme.run-42"),
        ("acme.run-42.agent.x", "acme.run-42"),
        ("acme.run-42.*", "acme.run-42"),
        ("acme.*.x", None),
        ("acme.>", None),
        ("*.run-42.x", None),
        ("acme", None),
        ("acme.inbox.x", None),
    ],
)
def test_which_subscriptions_make_a_connection_present(pattern: str, session: str | None) -> None:
    assert session_of(pattern) == session


def test_the_presence_command_names_one_session() -> None:
    cmd = decode_command(b'{"id": 1, "cmd": "presence", "session": "acme.run-42"}')
    assert cmd == PresenceQuery(1, "acme.run-42")
    for bad in ("acme", "acme.run.x", "acme.*", 7):
        with pytest.raises(InvalidTopic):
            decode_command(f'{{"id": 1, "cmd": "presence", "session": {bad!r}}}'.replace("'", '"'))


def test_a_scan_reports_what_changed_since_the_last_one() -> None:
    hub, _ = make_hub()
    conn = hub.connect(FakeSink())
    conn.hello_done, conn.client = True, "x"
    local = LocalPresence()
    assert local.scan(hub.connections) == ({}, {})
    for pattern in ("acme.run-1.>", "acme.run-1.agent.x", "acme.>", "acme.inbox.x"):
        hub.subscribe(conn, pattern, None, "key")
    assert local.scan(hub.connections) == ({"acme": [("acme.run-1", conn.id, "x")]}, {})
    assert local.scan(hub.connections) == ({}, {})
    hub.subscribe(conn, "globex.run-2", None, "key")
    hub.unsubscribe(conn, "acme.run-1.>")  # still present in acme.run-1 through agent.x
    assert local.scan(hub.connections) == ({"globex": [("globex.run-2", conn.id, "x")]}, {})
    hub.unsubscribe(conn, "acme.run-1.agent.x")
    assert local.scan(hub.connections) == ({}, {"acme": [("acme.run-1", conn.id, "x")]})
    assert local.snapshot() == {"globex": [("globex.run-2", conn.id, "x")]}
    hub.disconnected(conn)
    assert local.scan(hub.connections) == ({}, {"globex": [("globex.run-2", conn.id, "x")]})
    assert local.snapshot() == {}


def test_the_board_aggregates_within_its_bounds() -> None:
    board = PresenceBoard(max_sessions=2, max_members=2)
    events = board.apply("a", "acme", [("acme.s1", "a-1", "x"), ("acme.s1", "a-2", "y")], [])
    assert [(e.type, e.connection) for e in events] == [("join", "a-1"), ("join", "a-2")]
    assert board.apply("a", "acme", [("acme.s1", "a-1", "x")], []) == []  # already there
    assert board.apply("b", "acme", [("acme.s1", "b-1", "z")], []) == []  # session full
    assert board.apply("b", "acme", [("acme.s2", "b-1", "z")], []) != []
    assert board.apply("b", "acme", [("acme.s3", "b-2", "z")], []) == []  # sessions full
    assert board.refused == 2
    assert board.members("acme.s1") == [
        {"client": "x", "connection": "a-1", "node": "a"},
        {"client": "y", "connection": "a-2", "node": "a"},
    ]
    events = board.apply("a", "acme", [], [("acme.s1", "a-2", "y"), ("acme.s1", "a-9", None)])
    assert [(e.type, e.connection, e.client) for e in events] == [("leave", "a-2", "y")]
    events = board.drop_node("b")
    assert [(e.type, e.session, e.node) for e in events] == [("leave", "acme.s2", "b")]
    assert board.session_count == 1
    board.drop_tenant("acme")
    assert board.session_count == 0 and board.tenants() == []


def test_a_full_state_is_adopted_silently_once_then_diffed() -> None:
    board = PresenceBoard()
    board.stage("b", "acme", [("acme.s", "b-1", "x")], first=True)
    board.stage("b", "acme", [("acme.s", "b-2", "y")], first=False)
    assert board.commit("b", "acme") == []  # a new owner adopts what it never knew
    assert len(board.members("acme.s")) == 2
    board.stage("b", "acme", [("acme.s", "b-2", "y"), ("acme.s", "b-3", "z")], first=True)
    events = board.commit("b", "acme")  # a resync: the differences are real changes
    assert sorted((e.type, e.connection) for e in events) == [("join", "b-3"), ("leave", "b-1")]


async def test_a_query_the_owner_does_not_answer_is_unavailable() -> None:
    hub, _ = make_hub()
    sent: list[tuple[str, bytes]] = []
    service = PresenceService(
        hub,
        owner=lambda _tenant: "elsewhere",
        send=lambda node, data: sent.append((node, data)),
        query_timeout=0.05,
    )
    with pytest.raises(Unavailable):
        await service.query("acme.run-1")
    assert [node for node, _ in sent] == ["elsewhere"]
    assert service._pending == {}


# -- three nodes with real clients ---------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[list[Node]]:
    bus = LocalBus()
    config = ServerConfig(port=0, http_port=0, cluster_heartbeat=0.05, member_timeout=0.5)
    async with AsyncExitStack() as stack:
        nodes = []
        for name in "abc":
            node = Node(replace(config, node_id=name), broker=MemoryBroker(bus))
            await stack.enter_async_context(node)
            nodes.append(node)
        await converge(nodes)
        yield nodes


def link_of(node: Node) -> ClusterLink:
    assert node.hub is not None and node.hub.cluster is not None
    return node.hub.cluster


async def settle(link: ClusterLink, predicate: Callable[[], bool]) -> None:
    """Wait, at most 10 s, until ``predicate`` holds after some change of ``link``'s state."""
    async with asyncio.timeout(10):
        await link.wait_until(predicate)


async def converge(nodes: list[Node]) -> None:
    expected = tuple(sorted(n.node_id for n in nodes))
    for node in nodes:
        link = link_of(node)
        await settle(link, lambda link=link: link.ring.members == expected)


def tenant_owned_by(link: ClusterLink, owner: str) -> str:
    return next(t for t in (f"t{n}" for n in range(1000)) if link.owner(t) == owner)


async def presence_event(
    client: RawClient, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The next presence event ``match`` accepts (the watcher's own join comes too)."""
    for _ in range(20):
        event = await client.next_event()
        if event["topic"].endswith(".presence") and match(event["payload"]):
            payload: dict[str, Any] = event["payload"]
            return payload
    raise AssertionError("no matching presence event")


async def test_joins_and_leaves_are_published_and_queried_across_nodes(
    cluster: list[Node],
) -> None:
    a, b, c = cluster
    session = f"{tenant_owned_by(link_of(a), 'a')}.run-42"
    watcher = await RawClient.open(c.ws_url, "watcher")
    assert (await watcher.call("subscribe", topic=f"{session}.presence"))["ok"]
    x = await RawClient.open(b.ws_url, "x")
    assert (await x.call("subscribe", topic=f"{session}.>"))["ok"]
    assert (await x.call("subscribe", topic=f"{session}.agent.x"))["ok"]

    joins = {}
    for _ in range(2):  # the watcher is present too: c and b report at their next heartbeat
        event = await presence_event(watcher, lambda p: p["client"] not in joins)
        joins[event["client"]] = event
    joined = joins["x"]
    assert joined == {
        "type": "join",
        "session": session,
        "client": "x",
        "connection": joined["connection"],
        "node": "b",
    }
    reply = await watcher.call("presence", session=session)  # c asks a, the owner
    assert reply["ok"], reply
    assert reply["result"]["owner"] == "a"
    assert sorted(m["client"] for m in reply["result"]["members"]) == ["watcher", "x"]
    assert {m["node"] for m in reply["result"]["members"]} == {"b", "c"}

    assert (await x.call("unsubscribe", topic=f"{session}.>"))["ok"]  # still present
    assert (await x.call("unsubscribe", topic=f"{session}.agent.x"))["ok"]
    left = await presence_event(watcher, lambda p: p["client"] == "x")
    assert (left["type"], left["connection"]) == ("leave", joined["connection"])
    assert link_of(b).presence.published == 0  # only the owner publishes
    assert link_of(a).presence.published >= 3


async def test_the_members_of_a_node_that_dies_leave(cluster: list[Node]) -> None:
    a, b, c = cluster
    session = f"{tenant_owned_by(link_of(a), 'a')}.run-1"
    watcher = await RawClient.open(b.ws_url, "watcher")
    assert (await watcher.call("subscribe", topic=f"{session}.presence"))["ok"]
    x = await RawClient.open(c.ws_url, "x")
    assert (await x.call("subscribe", topic=f"{session}.chat"))["ok"]
    await presence_event(watcher, lambda p: p["client"] == "x" and p["type"] == "join")
    await c.stop()
    left = await presence_event(watcher, lambda p: p["client"] == "x")
    assert (left["type"], left["node"]) == ("leave", "c")


async def test_a_new_owner_rebuilds_the_presence_of_a_tenant(
    cluster: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the hand-over on the ring change may rebuild it, not the periodic anti-entropy.
    monkeypatch.setattr(PresenceService, "resync", lambda self: None)
    a, b, c = cluster
    tenant = tenant_owned_by(link_of(a), "c")
    session = f"{tenant}.run-7"
    watcher = await RawClient.open(a.ws_url, "watcher")
    assert (await watcher.call("subscribe", topic=f"{session}.presence"))["ok"]
    x = await RawClient.open(b.ws_url, "x")
    assert (await x.call("subscribe", topic=f"{session}.>"))["ok"]
    await presence_event(watcher, lambda p: p["client"] == "x" and p["type"] == "join")

    await c.stop()
    await converge([a, b])
    new_owner = link_of(a).owner(tenant)
    owner_link = link_of(a if new_owner == "a" else b)
    await settle(owner_link, lambda: len(owner_link.presence.board.members(session)) == 2)
    reply = await watcher.call("presence", session=session)
    assert reply["result"]["owner"] == new_owner
    assert sorted(m["client"] for m in reply["result"]["members"]) == ["watcher", "x"]
    await x.close()
    left = await presence_event(watcher, lambda p: p["client"] == "x")
    assert left["type"] == "leave"


async def test_one_node_without_a_broker_owns_every_session() -> None:
    async with Node(ServerConfig(port=0, http_port=0)) as node:
        watcher = await RawClient.open(node.ws_url, "watcher")
        assert (await watcher.call("subscribe", topic="acme.run-1.presence"))["ok"]
        reply = await watcher.call("presence", session="acme.run-1")
        assert reply["result"]["owner"] == node.node_id
        assert [m["client"] for m in reply["result"]["members"]] == ["watcher"]
        x = await RawClient.open(node.ws_url, "x")
        assert (await x.call("subscribe", topic="acme.run-1.agent.x"))["ok"]
        joined = await presence_event(watcher, lambda p: p["client"] == "x")
        assert (joined["type"], joined["node"]) == ("join", node.node_id)
        reply = await x.call("presence", session="acme.run-1")
        assert sorted(m["client"] for m in reply["result"]["members"]) == ["watcher", "x"]
        await x.close()
        left = await presence_event(watcher, lambda p: p["client"] == "x")
        assert left["type"] == "leave"
        await watcher.close()
