"""Resuming a durable subscription on one node of a cluster while other nodes publish: the
subscriber gets every position after its ``since`` exactly once, in order, whatever order
and delay the broker brings the other nodes' events in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.wsclient import RawClient

TOPIC = "acme.durable.resume"


class HeldBroker(MemoryBroker):
    """A :class:`MemoryBroker` whose event publications can be held back and released
    later in order, as a broker client's send queue does while its server is away."""

    def __init__(self, bus: LocalBus) -> None:
        super().__init__(bus)
        self.holding = False
        self.held: list[tuple[str, bytes]] = []

    def publish(self, topic: str, envelope: bytes) -> None:
        if self.holding:
            self.held.append((topic, envelope))
        else:
            super().publish(topic, envelope)

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for topic, envelope in held:
            super().publish(topic, envelope)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, HeldBroker]]:
    """Nodes a and b on one bus sharing one SQLite history; b's broker can hold events."""
    bus = LocalBus()
    config = ServerConfig(
        port=0,
        http_port=0,
        history=f"sqlite:///{tmp_path}/shared.db",
        durable=(DurableRule("acme.durable.>"),),
        cluster_heartbeat=0.05,
    )
    held = HeldBroker(bus)
    async with AsyncExitStack() as stack:
        a = Node(config, broker=MemoryBroker(bus))
        b = Node(config, broker=held)
        for node in (a, b):
            await stack.enter_async_context(node)
        yield a, b, held


async def _publish(client: RawClient, payload: Any) -> dict[str, Any]:
    reply = await client.call("publish", topic=TOPIC, payload=payload)
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def _resume(client: RawClient, epoch: str, seq: int) -> dict[str, Any]:
    reply = await client.call("subscribe", topic=TOPIC, since={"epoch": epoch, "seq": seq})
    assert reply["ok"], reply
    assert reply["result"]["recovered"], reply
    result: dict[str, Any] = reply["result"]
    return result


def _went_live(node: Node, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a subscription of ``node`` has replayed its history and gone live
    (the replay tells the cluster link where the subscription continues)."""
    assert node.hub is not None and node.hub.cluster is not None
    link = node.hub.cluster
    resumed, live = link.resumed, asyncio.Event()

    def resumed_and_tell(topic: str, seq: int) -> None:
        resumed(topic, seq)
        live.set()

    monkeypatch.setattr(link, "resumed", resumed_and_tell)
    return live


async def _wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(10):
        await event.wait()


async def _seqs(client: RawClient, count: int) -> list[int]:
    async with asyncio.timeout(10):
        return [(await client.next_event())["seq"] for _ in range(count)]


async def test_a_late_first_remote_event_is_not_sent_again_after_the_replay(
    pair: tuple[Node, Node, HeldBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, held = pair
    live = _went_live(a, monkeypatch)
    publisher = await RawClient.open(b.ws_url)
    held.holding = True  # b's broker link is backed up: its events reach a only later
    epoch = (await _publish(publisher, 1))["epoch"]
    for n in (2, 3):
        await _publish(publisher, n)
    subscriber = await RawClient.open(a.ws_url)
    assert (await _resume(subscriber, epoch, 1))["seq"] == 3
    assert await _seqs(subscriber, 2) == [2, 3]
    await _wait(live)
    held.release()  # seq 1..3 now reach node a, the first of its topic it hears of
    assert (await _publish(publisher, 4))["seq"] == 4
    assert await _seqs(subscriber, 1) == [4]


async def test_a_feed_left_behind_by_an_earlier_subscriber_does_not_replay_again(
    pair: tuple[Node, Node, HeldBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = pair
    publisher = await RawClient.open(b.ws_url)
    first = await RawClient.open(a.ws_url)
    assert (await first.call("subscribe", topic=TOPIC))["ok"]
    epoch = (await _publish(publisher, 1))["epoch"]
    assert await _seqs(first, 1) == [1]
    assert (await first.call("unsubscribe", topic=TOPIC))["ok"]
    for n in range(2, 6):
        await _publish(publisher, n)
    live = _went_live(a, monkeypatch)  # the first subscription went live before
    subscriber = await RawClient.open(a.ws_url)
    assert (await _resume(subscriber, epoch, 3))["seq"] == 5
    assert await _seqs(subscriber, 2) == [4, 5]
    await _wait(live)
    await _publish(publisher, 6)
    assert await _seqs(subscriber, 1) == [6]


async def test_a_lost_first_remote_event_after_the_replay_is_read_from_history(
    pair: tuple[Node, Node, HeldBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, held = pair
    live = _went_live(a, monkeypatch)
    publisher = await RawClient.open(b.ws_url)
    epoch = (await _publish(publisher, 1))["epoch"]
    subscriber = await RawClient.open(a.ws_url)
    await _resume(subscriber, epoch, 0)
    assert await _seqs(subscriber, 1) == [1]
    await _wait(live)
    held.up = False  # seq 2 never reaches node a through the broker
    await _publish(publisher, 2)
    held.up = True
    await _publish(publisher, 3)
    assert await _seqs(subscriber, 2) == [2, 3]


async def _publish_until(
    client: RawClient, tag: str, stop: asyncio.Event, started: asyncio.Event, seqs: list[int]
) -> None:
    """Publish up to 200 events until ``stop``; ``started`` once 3 (of all) were acked."""
    for n in range(200):
        if stop.is_set():
            return
        seqs.append((await _publish(client, f"{tag}{n}"))["seq"])
        if len(seqs) >= 3:
            started.set()


@pytest.mark.timeout(120)
async def test_resume_while_two_nodes_publish_has_no_duplicate_and_no_gap(
    pair: tuple[Node, Node, HeldBroker],
) -> None:
    a, b, held = pair
    on_a, on_b = await RawClient.open(a.ws_url), await RawClient.open(b.ws_url)
    epoch = (await _publish(on_b, "first"))["epoch"]
    for round_ in range(20):
        stop, started = asyncio.Event(), asyncio.Event()
        published: list[int] = []
        tasks = [
            asyncio.create_task(_publish_until(client, tag, stop, started, published))
            for client, tag in ((on_a, "a"), (on_b, "b"))
        ]
        subscriber = await RawClient.open(a.ws_url)
        await _wait(started)
        held.holding = round_ % 2 == 1  # every other round b's events reach a late
        since = max(published)
        await _resume(subscriber, epoch, since)
        held.release()
        stop.set()
        await asyncio.gather(*tasks)
        last = (await _publish(on_b, f"end{round_}"))["seq"]
        got = await _seqs(subscriber, last - since)
        assert got == list(range(since + 1, last + 1)), (round_, since)
        await subscriber.close()


async def test_remote_events_lost_during_the_replay_are_read_from_history(
    pair: tuple[Node, Node, HeldBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, held = pair
    live = _went_live(a, monkeypatch)
    publisher = await RawClient.open(b.ws_url)
    epoch = (await _publish(publisher, 1))["epoch"]
    assert a.hub is not None and a.hub.history is not None
    history = a.hub.history
    read, reading, go = history.read, asyncio.Event(), asyncio.Event()

    async def read_then_wait(*args: Any, **kwargs: Any) -> Any:
        """The replay's read of history, held back until the test has published more."""
        result = await read(*args, **kwargs)
        monkeypatch.setattr(history, "read", read)
        reading.set()
        await go.wait()
        return result

    monkeypatch.setattr(history, "read", read_then_wait)
    subscriber = await RawClient.open(a.ws_url)
    await _resume(subscriber, epoch, 1)
    async with asyncio.timeout(10):
        await reading.wait()
    held.up = False  # seq 2 never reaches node a through the broker
    await _publish(publisher, 2)
    held.up = True
    await _publish(publisher, 3)  # parked on the replaying subscription
    go.set()
    assert await _seqs(subscriber, 2) == [2, 3]
    await _wait(live)
    await _publish(publisher, 4)
    assert await _seqs(subscriber, 1) == [4]


@pytest.mark.timeout(20)
async def test_an_event_parked_while_its_gap_is_read_from_history_is_delivered_once(
    pair: tuple[Node, Node, HeldBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = pair
    publisher = await RawClient.open(b.ws_url)  # node a has no interest: it hears nothing
    for n in range(1, 10):
        await _publish(publisher, n)
    hub = a.hub
    assert hub is not None and hub.history is not None and hub.cluster is not None
    history = hub.history
    stored = {e.seq: e for e in await history.read(TOPIC, 0, 100)}
    delivered: list[int] = []
    hub.observer = lambda topic, envelope: delivered.append(orjson.loads(envelope)["seq"])
    feed = hub.cluster._feed(TOPIC)

    def offer(seq: int) -> None:
        feed.offer(seq, stored[seq].envelope_json(), stored[seq].headers)

    read = history.read

    async def read_and_offer_meanwhile(*args: Any, **kwargs: Any) -> Any:
        """The feed's gap read (5..8), during which the broker brings seq 7."""
        result = await read(*args, **kwargs)
        monkeypatch.setattr(history, "read", read)
        offer(7)
        return result

    monkeypatch.setattr(history, "read", read_and_offer_meanwhile)
    for seq in range(1, 5):
        offer(seq)
    before = set(hub.tasks)
    offer(9)  # ahead: parked, and the gap 5..8 is read from history
    (fill,) = set(hub.tasks) - before
    async with asyncio.timeout(10):
        await fill
    assert delivered == list(range(1, 10))
    assert not feed.parked and feed.expected == 10
