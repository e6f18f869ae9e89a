"""Durable topics through a real node: acked publishes, resume with no gap and no
duplicate, gap policies, idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule, GapPolicy
from agentcast.node import Node
from tests.pg import pg_history_url
from tests.wsclient import RawClient

RULES = (
    DurableRule("acme.durable.>", max_events=100_000),
    DurableRule("acme.short.>", max_events=5),
    DurableRule("acme.snap.>", max_events=5, on_gap=GapPolicy.SNAPSHOT, snapshot_key="agent"),
    DurableRule("acme.strict.>", max_events=5, on_gap=GapPolicy.REFUSE),
)


def durable_config(history: str, **kw: Any) -> ServerConfig:
    return ServerConfig(
        port=0, http_port=0, history=history, durable=RULES, retention_interval=3600, **kw
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def dnode(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    if request.param == "postgres":
        async with pg_history_url() as url, Node(durable_config(url)) as node:
            yield node
        return
    history = "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/h.db"
    async with Node(durable_config(history)) as node:
        yield node


async def publish_n(client: RawClient, topic: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """Pipelined acked publishes of payloads start..start+n-1; returns the ack results."""
    ids = []
    for i in range(start, start + n):
        command_id = f"p{i}"
        ids.append(command_id)
        await client.send(id=command_id, cmd="publish", topic=topic, payload=i)
    results: dict[str, Any] = {}
    while len(results) < n:
        message = await client.recv()
        if message["type"] == "reply" and message["id"] in ids:
            assert message["ok"], message
            results[message["id"]] = message["result"]
        elif message["type"] == "event":
            client.pending_events.append(message)
    return [results[i] for i in ids]


async def test_durable_publish_is_acked_with_store_positions(dnode: Node) -> None:
    sub = await RawClient.open(dnode.ws_url)
    await sub.call("subscribe", topic="acme.durable.a")
    pub = await RawClient.open(dnode.ws_url)
    acks = await publish_n(pub, "acme.durable.a", 50)
    assert [a["seq"] for a in acks] == list(range(1, 51))
    assert len({a["epoch"] for a in acks}) == 1
    events = [await sub.next_event() for _ in range(50)]
    assert [e["seq"] for e in events] == list(range(1, 51))
    assert [e["id"] for e in events] == [a["id"] for a in acks]


async def test_resume_delivers_exactly_the_missed_events(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    first = await publish_n(pub, "acme.durable.r", 10)
    seen = first[-1]
    missed = await publish_n(pub, "acme.durable.r", 10_000, start=10)
    sub = await RawClient.open(dnode.ws_url)
    reply = await sub.call(
        "subscribe", topic="acme.durable.r", since={"epoch": seen["epoch"], "seq": seen["seq"]}
    )
    assert reply["result"]["recovered"] is True
    assert reply["result"]["seq"] == 10_010
    events = [await sub.next_event() for _ in range(10_000)]
    assert [e["seq"] for e in events] == list(range(11, 10_011))
    assert [e["id"] for e in events] == [m["id"] for m in missed]
    live = await publish_n(pub, "acme.durable.r", 1, start=10_010)
    assert (await sub.next_event())["id"] == live[0]["id"]


async def test_resume_while_publishing_has_no_gap_and_no_duplicate(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    epoch = (await publish_n(pub, "acme.durable.m", 2_000))[0]["epoch"]
    sub = await RawClient.open(dnode.ws_url)
    stop = asyncio.Event()

    async def keep_publishing() -> int:
        count = 2_000
        while not stop.is_set() and count < 6_000:
            await publish_n(pub, "acme.durable.m", 100, start=count)
            count += 100
        return count

    publisher = asyncio.ensure_future(keep_publishing())
    await sub.send(
        id="s", cmd="subscribe", topic="acme.durable.m", since={"epoch": epoch, "seq": 0}
    )
    received: list[int] = []
    while len(received) < 3_000:
        message = await sub.recv()
        if message["type"] == "event":
            received.append(message["event"]["seq"])
    stop.set()
    total = await publisher
    while len(received) < total:
        received.append((await sub.next_event())["seq"])
    assert received == list(range(1, total + 1))


async def test_unknown_epoch_is_not_recovered_and_starts_from_now(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    await publish_n(pub, "acme.durable.e", 3)
    sub = await RawClient.open(dnode.ws_url)
    reply = await sub.call("subscribe", topic="acme.durable.e", since={"epoch": "old", "seq": 2})
    assert reply["result"]["recovered"] is False
    live = await publish_n(pub, "acme.durable.e", 1, start=3)
    assert (await sub.next_event())["seq"] == live[0]["seq"] == 4


async def trim(node: Node, topic: str, keep: int) -> None:
    assert node.history is not None
    await node.history.trim(topic, keep, None)


async def test_position_older_than_retention_follows_the_gap_policy(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    for topic in ("acme.short.t", "acme.strict.t"):
        await publish_n(pub, topic, 20)
        await trim(dnode, topic, 5)
    acks = []
    for n in range(12):
        acks.append(
            (
                await pub.call(
                    "publish", topic="acme.snap.t", payload=n, headers={"agent": f"a{n % 3}"}
                )
            )["result"]
        )
    await trim(dnode, "acme.snap.t", 5)
    epoch = acks[0]["epoch"]

    sub = await RawClient.open(dnode.ws_url)
    reply = await sub.call("subscribe", topic="acme.short.t", since={"epoch": epoch, "seq": 3})
    assert reply["ok"] and reply["result"]["recovered"] is False

    reply = await sub.call("subscribe", topic="acme.strict.t", since={"epoch": epoch, "seq": 3})
    assert reply["ok"] is False and reply["error"]["code"] == "position_lost"
    reply = await sub.call("unsubscribe", topic="acme.strict.t")
    assert reply["error"]["code"] == "not_subscribed"

    reply = await sub.call("subscribe", topic="acme.snap.t", since={"epoch": epoch, "seq": 1})
    assert reply["result"]["recovered"] is False
    snapshot = [await sub.next_event() for _ in range(3)]
    assert {e["headers"]["agent"]: e["payload"] for e in snapshot} == {"a0": 9, "a1": 10, "a2": 11}
    assert [e["seq"] for e in snapshot] == sorted(e["seq"] for e in snapshot)


async def test_within_retention_resume_after_trim_still_recovers(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    acks = await publish_n(pub, "acme.short.k", 20)
    await trim(dnode, "acme.short.k", 5)
    sub = await RawClient.open(dnode.ws_url)
    since = {"epoch": acks[0]["epoch"], "seq": 15}
    reply = await sub.call("subscribe", topic="acme.short.k", since=since)
    assert reply["result"]["recovered"] is True
    assert [(await sub.next_event())["seq"] for _ in range(5)] == [16, 17, 18, 19, 20]


async def test_last_n_and_since_time(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    await publish_n(pub, "acme.durable.l", 30)
    sub = await RawClient.open(dnode.ws_url)
    assert (await sub.call("subscribe", topic="acme.durable.l", last=4))["ok"]
    assert [(await sub.next_event())["seq"] for _ in range(4)] == [27, 28, 29, 30]
    other = await RawClient.open(dnode.ws_url)
    assert (
        await other.call("subscribe", topic="acme.durable.l", since_time="2000-01-01T00:00:00Z")
    )["ok"]
    assert [(await other.next_event())["seq"] for _ in range(30)] == list(range(1, 31))


async def test_hello_resumes_many_topics_in_one_round_trip(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    a = await publish_n(pub, "acme.durable.h1", 5)
    b = await publish_n(pub, "acme.durable.h2", 5)
    client = await RawClient.open(dnode.ws_url, hello=False)
    reply = await client.call(
        "hello",
        client="back",
        resume={
            "acme.durable.h1": {"epoch": a[0]["epoch"], "seq": 2},
            "acme.durable.h2": {"epoch": b[0]["epoch"], "seq": 4},
            "acme.ephemeral": {"epoch": "x", "seq": 1},
        },
    )
    resume = reply["result"]["resume"]
    assert resume["acme.durable.h1"]["recovered"] is True
    assert resume["acme.durable.h2"]["recovered"] is True
    assert resume["acme.ephemeral"]["error"]["code"] == "not_durable"
    events = [await client.next_event() for _ in range(4)]
    assert sorted((e["topic"], e["seq"]) for e in events) == [
        ("acme.durable.h1", 3),
        ("acme.durable.h1", 4),
        ("acme.durable.h1", 5),
        ("acme.durable.h2", 5),
    ]


async def test_history_requests_on_ephemeral_topics_or_patterns_are_refused(dnode: Node) -> None:
    sub = await RawClient.open(dnode.ws_url)
    reply = await sub.call("subscribe", topic="acme.other", last=3)
    assert reply["error"]["code"] == "not_durable"
    reply = await sub.call("subscribe", topic="acme.durable.*", last=3)
    assert reply["error"]["code"] == "unsupported"


async def test_durable_idempotency_key_survives_a_restart(tmp_path: Path) -> None:
    config = durable_config(f"sqlite:///{tmp_path}/h.db")
    async with Node(config) as node:
        pub = await RawClient.open(node.ws_url)
        first = await pub.call("publish", topic="acme.durable.i", payload=1, idempotency_key="k")
    async with Node(config) as node:
        pub = await RawClient.open(node.ws_url)
        again = await pub.call("publish", topic="acme.durable.i", payload=1, idempotency_key="k")
        other = await pub.call("publish", topic="acme.durable.i", payload=2)
    assert again["result"]["duplicate"] is True
    assert (again["result"]["id"], again["result"]["seq"]) == (first["result"]["id"], 1)
    assert other["result"]["seq"] == 2 and other["result"]["epoch"] == first["result"]["epoch"]


async def test_overloaded_durable_publish_is_refused_with_its_command_id(dnode: Node) -> None:
    assert dnode.hub is not None and dnode.hub.durable_log is not None
    dnode.hub.durable_log.max_pending = 0
    pub = await RawClient.open(dnode.ws_url)
    reply = await pub.call("publish", topic="acme.durable.o", payload=1)
    assert reply["ok"] is False and reply["error"]["code"] == "overloaded"
    dnode.hub.durable_log.max_pending = 10
    assert (await pub.call("publish", topic="acme.durable.o", payload=1))["ok"]


async def test_switch_from_replay_to_live_respects_small_queues(tmp_path: Path) -> None:
    """Many live events parked during a replay reach a client with a small queue bound,
    without a slow-consumer close and without a gap."""
    from agentcast.hub.config import HubConfig

    config = ServerConfig(
        port=0,
        http_port=0,
        history="memory",
        durable=RULES,
        hub=HubConfig(max_queue_messages=50, replay_page=20),
    )
    async with Node(config) as node:
        pub = await RawClient.open(node.ws_url)
        epoch = (await publish_n(pub, "acme.durable.s", 500))[0]["epoch"]
        sub = await RawClient.open(node.ws_url)
        await sub.send(
            id="s", cmd="subscribe", topic="acme.durable.s", since={"epoch": epoch, "seq": 0}
        )
        publisher = asyncio.ensure_future(publish_n(pub, "acme.durable.s", 500, start=500))
        received = [(await sub.next_event())["seq"] for _ in range(1000)]
        await publisher
        assert received == list(range(1, 1001))


async def test_unsubscribe_during_a_replay_stops_it(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    epoch = (await publish_n(pub, "acme.durable.u", 3_000))[0]["epoch"]
    sub = await RawClient.open(dnode.ws_url)
    await sub.send(
        id="s", cmd="subscribe", topic="acme.durable.u", since={"epoch": epoch, "seq": 0}
    )
    reply = await sub.call("unsubscribe", topic="acme.durable.u")
    assert reply["ok"]
    marker = await sub.call("ping")
    assert marker["ok"]
    assert len(sub.pending_events) < 3_000, "the replay stopped with its subscription"
    await publish_n(pub, "acme.durable.u", 1, start=3_000)
    other = await sub.call("subscribe", topic="acme.other")
    assert other["ok"]
    left = len(sub.pending_events)
    # Nothing of the unsubscribed topic arrives any more (the ping reply proves the order).
    assert (await sub.call("ping"))["ok"] and len(sub.pending_events) == left


async def test_overlapping_wildcard_and_resume_deliver_each_position_once(dnode: Node) -> None:
    pub = await RawClient.open(dnode.ws_url)
    epoch = (await publish_n(pub, "acme.durable.w", 200))[0]["epoch"]
    sub = await RawClient.open(dnode.ws_url)
    assert (await sub.call("subscribe", topic="acme.durable.>"))["ok"]
    await sub.send(
        id="s", cmd="subscribe", topic="acme.durable.w", since={"epoch": epoch, "seq": 100}
    )
    publisher = asyncio.ensure_future(publish_n(pub, "acme.durable.w", 100, start=200))
    seqs = [(await sub.next_event())["seq"] for _ in range(200)]
    await publisher
    assert sorted(seqs) == seqs and len(set(seqs)) == 200
    assert seqs == list(range(101, 301))
