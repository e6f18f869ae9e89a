"""One suite, every broker: interest routing, FIFO per publisher, direct messages,
heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agentcast.brokers.base import Broker

TIMEOUT = 10


class Recorder:
    """A BrokerHandler that queues what it receives."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.direct: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.heartbeats: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.health: list[bool] = []

    def on_event(self, origin: str, topic: str, envelope: bytes) -> None:
        self.events.put_nowait((origin, topic, envelope))

    def on_direct(self, origin: str, data: bytes) -> None:
        self.direct.put_nowait((origin, data))

    def on_heartbeat(self, origin: str, data: bytes) -> None:
        self.heartbeats.put_nowait((origin, data))

    def on_health(self, healthy: bool) -> None:
        self.health.append(healthy)

    async def next_event(self) -> tuple[str, str, bytes]:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)


async def node(make_broker: Callable[[], Broker], name: str) -> tuple[Broker, Recorder]:
    broker = make_broker()
    recorder = Recorder()
    await broker.start(name, recorder)
    assert broker.healthy
    return broker, recorder


async def settle(sender: Broker, receiver: Recorder, receiver_broker: Broker) -> None:
    """Make sure interests took effect: a probe topic round-trips."""
    receiver_broker.add_interest("probe.x")
    for _ in range(50):  # subscribing is asynchronous on real brokers
        sender.publish("probe.x", b"probe")
        try:
            await asyncio.wait_for(receiver.events.get(), 0.2)
        except TimeoutError:
            continue
        break
    else:
        raise AssertionError("the probe never arrived")
    while not receiver.events.empty():
        receiver.events.get_nowait()


async def test_events_reach_interested_nodes_in_order(make_broker: Callable[[], Broker]) -> None:
    a, _ = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    b.add_interest("acme.>")
    b.add_interest("acme.run.chat")  # overlapping interests may deliver twice
    await settle(a, rb, b)
    for n in range(500):
        a.publish(f"acme.run.{'chat' if n % 2 else 'log'}", str(n).encode())
    a.publish("zz.done", b"end")
    b.add_interest("zz.done")
    got: list[int] = []
    seen: set[int] = set()
    while len(seen) < 500:
        origin, topic, body = await rb.next_event()
        assert origin == "a" and topic.startswith("acme.run.")
        n = int(body)
        if n not in seen:
            seen.add(n)
            got.append(n)
    assert got == list(range(500))


async def test_no_interest_no_traffic_and_no_echo(make_broker: Callable[[], Broker]) -> None:
    a, ra = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    b.add_interest("acme.a")
    a.add_interest("acme.a")
    await settle(a, rb, b)
    a.publish("other.x", b"not for b")
    a.publish("acme.a", b"for b")
    origin, topic, body = await rb.next_event()
    assert (origin, topic, body) == ("a", "acme.a", b"for b")
    b.remove_interest("acme.a")
    b.add_interest("acme.sentinel")
    await settle(a, rb, b)
    a.publish("acme.a", b"after remove")
    a.publish("acme.sentinel", b"s")
    assert (await rb.next_event())[2] == b"s"
    assert ra.events.empty(), "a node never receives its own events"


async def test_wildcard_interest(make_broker: Callable[[], Broker]) -> None:
    a, _ = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    b.add_interest("acme.*.chat")
    await settle(a, rb, b)
    a.publish("acme.r1.chat", b"1")
    a.publish("acme.r2.chat", b"2")
    bodies = {(await rb.next_event())[2] for _ in range(2)}
    assert bodies == {b"1", b"2"}


async def test_direct_messages_reach_only_their_node(make_broker: Callable[[], Broker]) -> None:
    a, _ = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    c, rc = await node(make_broker, "c")
    await settle(a, rb, b)
    await settle(a, rc, c)
    a.send_to("c", b"to c")
    a.send_to("nobody", b"lost")
    assert await asyncio.wait_for(rc.direct.get(), TIMEOUT) == ("a", b"to c")
    a.send_to("b", b"to b")
    assert await asyncio.wait_for(rb.direct.get(), TIMEOUT) == ("a", b"to b")
    assert rc.direct.empty()


async def test_heartbeats_reach_every_other_node(make_broker: Callable[[], Broker]) -> None:
    a, ra = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    c, rc = await node(make_broker, "c")
    await settle(a, rb, b)
    await settle(a, rc, c)
    a.heartbeat(b'{"n": 1}')
    assert await asyncio.wait_for(rb.heartbeats.get(), TIMEOUT) == ("a", b'{"n": 1}')
    assert await asyncio.wait_for(rc.heartbeats.get(), TIMEOUT) == ("a", b'{"n": 1}')
    assert ra.heartbeats.empty()


async def test_interest_churn_ends_with_the_last_wish(make_broker: Callable[[], Broker]) -> None:
    """Quick remove/add cycles (a subscriber reconnecting) and two patterns that one broker
    may map to the same subscription: what is wanted at the end is what is received."""
    a, _ = await node(make_broker, "a")
    b, rb = await node(make_broker, "b")
    for _ in range(50):
        b.add_interest("acme.churn")
        b.remove_interest("acme.churn")
        await asyncio.sleep(0)
    b.add_interest("acme.churn")
    b.add_interest("other.*")
    b.add_interest("other.>")
    await settle(a, rb, b)
    b.remove_interest("other.>")  # other.* is still wanted (on Redis: the same glob)
    await settle(a, rb, b)
    a.publish("acme.churn", b"1")
    a.publish("other.x", b"2")
    bodies = {(await rb.next_event())[2] for _ in range(2)}
    assert bodies == {b"1", b"2"}
