"""The Python async client SDK against a real in-process node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

import agentcast.transport.ws as ws_transport
from agentcast.client import Backoff, Client, Envelope, PublishAck, Subscription
from agentcast.config import ServerConfig
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.hub.config import HubConfig
from agentcast.hub.connection import Connection
from agentcast.hub.dispatch import handle_frame as real_handle_frame
from agentcast.hub.hub import Hub, PublishResult
from agentcast.node import Node
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.commands import Publish

FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "max_reconnect_attempts": 1000,
}


@pytest.fixture(autouse=True)
async def no_orphan_tasks() -> AsyncIterator[None]:
    """Every client a test opened has ended its reader and supervisor by the end."""
    yield
    assert client_tasks() == []


@pytest.fixture
async def server() -> AsyncIterator[Node]:
    """A node on free loopback ports."""
    async with Node(ServerConfig(port=0, http_port=0)) as node:
        yield node


@pytest.fixture
def client_factory(server: Node) -> Callable[..., Client]:
    def make(**options: Any) -> Client:
        return Client(server.ws_url, **{**FAST, **options})

    return make


def client_tasks() -> list[asyncio.Task[object]]:
    """Tasks a client owns that are still running."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("agentcast-client") and not task.done()
    ]


def hub_of(node: Node) -> Hub:
    assert node.hub is not None
    return node.hub


async def next_event(sub: Subscription) -> Envelope:
    async with asyncio.timeout(10):
        return await sub.get()


async def test_publish_returns_the_ack_and_the_event_carries_every_field(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory(name="planner") as client:
        sub = await client.subscribe("acme.run-1.chat")
        ack = await client.publish(
            "acme.run-1.chat",
            {"text": "hi"},
            headers={"key": "plan"},
            correlation_id="run-1",
            causation_id="cause-1",
        )
        assert isinstance(ack, PublishAck)
        assert (ack.topic, ack.seq, ack.duplicate) == ("acme.run-1.chat", 1, False)
        assert ack.epoch and ack.id and ack.lamport >= 1
        event = await next_event(sub)
        assert event.id == ack.id
        assert (event.seq, event.epoch, event.lamport) == (1, ack.epoch, ack.lamport)
        assert event.payload == {"text": "hi"}
        assert event.headers == {"key": "plan"}
        assert (event.correlation_id, event.causation_id) == ("run-1", "cause-1")
        assert event.source == "ac://client/planner"
        second = await client.publish("acme.run-1.chat", 2)
        assert second is not None
        assert (second.seq, second.epoch) == (2, ack.epoch)
        assert client.connected
        assert client.connection_id is not None


async def test_exact_and_wildcard_subscriptions_get_events_in_seq_order(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as subscriber, client_factory() as publisher:
        exact = await subscriber.subscribe("acme.o.a")
        star = await subscriber.subscribe("acme.*.a")
        rest = await subscriber.subscribe("acme.>")
        for i in range(20):
            await publisher.publish("acme.o.a", i)
        await publisher.publish("acme.o.b", "only-rest")
        for sub in (exact, star, rest):
            events = [await next_event(sub) for _ in range(20)]
            assert [e.seq for e in events] == list(range(1, 21))
            assert [e.payload for e in events] == list(range(20))
        last = await next_event(rest)
        assert (last.topic, last.payload) == ("acme.o.b", "only-rest")
        assert exact.pending == 0 and star.pending == 0


async def test_overlapping_local_subscriptions_each_get_the_event(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        broad = await client.subscribe("acme.>")
        narrow = await client.subscribe("acme.run-2.chat")
        same = await client.subscribe("acme.run-2.chat")
        ack = await client.publish("acme.run-2.chat", "x")
        assert ack is not None
        for sub in (broad, narrow, same):
            assert (await next_event(sub)).id == ack.id
        # Unsubscribing one of two local holders of a pattern keeps the other one fed.
        await broad.unsubscribe()
        await same.unsubscribe()
        ack = await client.publish("acme.run-2.chat", "y")
        assert ack is not None
        assert (await next_event(narrow)).id == ack.id
        assert [e.payload async for e in same] == []


@pytest.mark.parametrize(
    ("topic", "code"),
    [
        ("acme.*", "wildcard_publish"),
        ("acme..x", "invalid_topic"),
        ("acme.has space", "invalid_topic"),
    ],
)
async def test_publish_refusal_raises_client_error_with_the_server_code(
    client_factory: Callable[..., Client], topic: str, code: str
) -> None:
    async with client_factory() as client:
        with pytest.raises(ClientError) as info:
            await client.publish(topic, 1)
        assert info.value.code == code
        ack = await client.publish("acme.ok", 1)  # the session is not disturbed
        assert ack is not None and ack.seq == 1


async def test_subscribe_refusal_raises_and_leaves_no_local_subscription(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        with pytest.raises(ClientError) as info:
            await client.subscribe("acme.run-*")
        assert info.value.code == "invalid_topic"
        with pytest.raises(ClientError) as info:
            await client.subscribe("acme.x", policy="fastest")
        assert info.value.code == "bad_request"
        assert client.subscriptions == ()


async def test_publish_without_ack_returns_none_and_is_delivered(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        sub = await client.subscribe("acme.fire")
        assert await client.publish("acme.fire", "and-forget", ack=False) is None
        event = await next_event(sub)
        assert (event.payload, event.seq) == ("and-forget", 1)


async def test_lamport_moves_past_every_received_value(
    server: Node, client_factory: Callable[..., Client]
) -> None:
    async with client_factory() as client:
        sub = await client.subscribe("acme.clock")
        hub_of(server).publish(Publish(None, "acme.clock", "far", lamport=1000), "ac://test/x")
        event = await next_event(sub)
        assert event.lamport > 1000
        assert client.lamport == event.lamport
        ack = await client.publish("acme.clock", "after")
        assert ack is not None
        assert ack.lamport > event.lamport
        assert client.lamport == ack.lamport


async def test_reconnects_to_a_restarted_node_on_the_same_port() -> None:
    first = Node(ServerConfig(port=0, http_port=0))
    await first.start()
    port = first.ws_port
    second: Node | None = None
    try:
        async with Client(first.ws_url, **FAST) as client:
            sub = await client.subscribe("acme.restart.>", policy="drop_oldest")
            before = await client.publish("acme.restart.a", "before")
            assert before is not None
            assert (await next_event(sub)).payload == "before"
            old_connection = client.connection_id
            lamport_before = client.lamport

            await first.stop()
            async with asyncio.TaskGroup() as group:
                # Issued while the node is down: waits for the reconnect, then is sent.
                during = group.create_task(client.publish("acme.restart.a", "during"))
                late = group.create_task(client.subscribe("acme.late"))
                second = Node(ServerConfig(port=port, http_port=0))
                await second.start()
            ack = during.result()
            assert ack is not None
            assert ack.seq == 1 and ack.epoch != before.epoch  # a new node, a new history
            assert ack.lamport > lamport_before  # the client carried its clock over
            event = await next_event(sub)  # the subscription was renewed by itself
            assert (event.payload, event.id) == ("during", ack.id)
            after = await client.publish("acme.restart.b", "after")
            assert after is not None
            assert (await next_event(sub)).id == after.id
            late_ack = await client.publish("acme.late", "late")
            assert late_ack is not None
            assert (await next_event(late.result())).id == late_ack.id
            assert client.connected and client.reconnects == 1
            assert client.connection_id != old_connection
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_same_idempotency_key_returns_the_original_position(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        sub = await client.subscribe("acme.once")
        first = await client.publish("acme.once", 1, idempotency_key="k-1")
        again = await client.publish("acme.once", 1, idempotency_key="k-1")
        assert first is not None and again is not None
        assert (first.duplicate, again.duplicate) == (False, True)
        assert (again.id, again.seq, again.epoch) == (first.id, first.seq, first.epoch)
        marker = await client.publish("acme.once", "marker")
        assert marker is not None and marker.seq == 2
        assert [(await next_event(sub)).seq for _ in range(2)] == [1, 2]


async def test_publish_in_flight_when_the_connection_drops_is_resent_and_deduplicated(
    server: Node, client_factory: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_of(server)
    async with client_factory() as observer, client_factory() as client:
        watched = await observer.subscribe("acme.drop")
        conn = hub.connections[str(client.connection_id)]
        real_publish = hub.publish
        dropped = 0

        def publish_then_drop(cmd: Publish, source: str) -> PublishResult:
            nonlocal dropped
            result = real_publish(cmd, source)
            if cmd.idempotency_key == "drop-me" and not conn.closed:
                # The event is sequenced and delivered, but the ack never leaves the node.
                dropped += 1
                hub.close(conn, CloseCode.SERVER_ERROR, "lost ack", flush=False)
            return result

        monkeypatch.setattr(hub, "publish", publish_then_drop)
        ack = await client.publish("acme.drop", "payload", idempotency_key="drop-me")
        assert ack is not None
        assert dropped == 1
        assert (ack.seq, ack.duplicate) == (1, True)
        assert client.reconnects == 1
        marker = await client.publish("acme.drop", "marker")
        assert marker is not None and marker.seq == 2
        first = await next_event(watched)
        assert (first.seq, first.payload, first.id) == (1, "payload", ack.id)
        assert (await next_event(watched)).payload == "marker"  # delivered once, not twice


async def test_in_flight_publishes_are_resent_in_their_original_order(
    server: Node, client_factory: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_of(server)
    async with client_factory() as observer, client_factory() as client:
        watched = await observer.subscribe("acme.order")
        conn = hub.connections[str(client.connection_id)]
        real_publish = hub.publish

        def drop_first(cmd: Publish, source: str) -> PublishResult:
            if cmd.idempotency_key == "p0" and not conn.closed:
                # Lose the connection before anything is sequenced.
                hub.close(conn, CloseCode.SERVER_ERROR, "lost", flush=False)
                return PublishResult("", cmd.topic, 0, "", 0)  # never sent: conn is closed
            return real_publish(cmd, source)

        monkeypatch.setattr(hub, "publish", drop_first)
        acks = await asyncio.gather(
            *(client.publish("acme.order", i, idempotency_key=f"p{i}") for i in range(5))
        )
        assert [a.seq for a in acks if a is not None] == [1, 2, 3, 4, 5]
        events = [await next_event(watched) for _ in range(5)]
        assert [e.payload for e in events] == [0, 1, 2, 3, 4]


async def test_closing_the_client_ends_iteration(client_factory: Callable[..., Client]) -> None:
    client = client_factory()
    await client.connect()
    sub = await client.subscribe("acme.end")
    received: list[Envelope] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in sub:
            received.append(event)
            first.set()

    async with asyncio.TaskGroup() as group:
        consumer = group.create_task(consume())
        await client.publish("acme.end", 1)
        await first.wait()
        await client.close()
    assert consumer.done() and not consumer.cancelled()
    assert client_tasks() == []
    assert [e.payload for e in received] == [1]
    assert not client.connected
    with pytest.raises(ConnectionClosed) as info:
        await client.publish("acme.end", 2)
    assert info.value.close_code == 1000
    await client.close()  # idempotent


async def test_unsubscribe_ends_iteration_and_stops_delivery(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        sub = await client.subscribe("acme.u")
        other = await client.subscribe("acme.>")
        await client.publish("acme.u", 1)
        assert (await next_event(other)).payload == 1
        await sub.unsubscribe()
        await sub.unsubscribe()  # idempotent
        assert [e.payload async for e in sub] == [1]  # buffered events, then the end
        with pytest.raises(ClientError) as info:
            await sub.get()
        assert info.value.code == "not_subscribed"
        await client.publish("acme.u", 2)
        assert (await next_event(other)).payload == 2
        assert sub.pending == 0 and not sub.active


@pytest.mark.parametrize("code", [CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA])
async def test_a_no_reconnect_close_surfaces_connection_closed(
    server: Node, client_factory: Callable[..., Client], code: CloseCode
) -> None:
    hub = hub_of(server)
    async with client_factory() as client:
        sub = await client.subscribe("acme.fatal")
        conn = hub.connections[str(client.connection_id)]
        hub.close(conn, code, "go away", flush=True)
        with pytest.raises(ConnectionClosed) as info:
            async for _ in sub:
                pass
        assert info.value.close_code == code
        with pytest.raises(ConnectionClosed) as info:
            await client.publish("acme.fatal", 1)
        assert info.value.close_code == code
        assert not client.connected and client.reconnects == 0


async def test_a_binary_frame_from_the_client_ends_the_session(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        sub = await client.subscribe("acme.bin")
        link = client._link
        assert link is not None
        await link.ws.send(b"\x00\x01")  # protocol violation: the node closes with 4501
        with pytest.raises(ConnectionClosed) as info:
            await sub.get()
        assert info.value.close_code == CloseCode.UNSUPPORTED_DATA


async def test_without_reconnect_a_shutdown_code_ends_the_client(
    server: Node, client_factory: Callable[..., Client]
) -> None:
    hub = hub_of(server)
    async with client_factory(reconnect=False) as client:
        sub = await client.subscribe("acme.noretry")
        hub.close(hub.connections[str(client.connection_id)], CloseCode.SHUTDOWN, "", flush=True)
        with pytest.raises(ConnectionClosed) as info:
            await sub.get()
        assert info.value.close_code == CloseCode.SHUTDOWN


async def test_gives_up_after_the_reconnect_budget() -> None:
    node = Node(ServerConfig(port=0, http_port=0))
    await node.start()
    try:
        async with Client(node.ws_url, **{**FAST, "max_reconnect_attempts": 3}) as client:
            sub = await client.subscribe("acme.gone")
            await node.stop()  # nothing listens on the port any more
            with pytest.raises(ConnectionClosed) as info:
                await sub.get()
            assert info.value.close_code == CloseCode.SHUTDOWN
            assert "3 attempts" in info.value.message
    finally:
        await node.stop()


async def test_a_full_local_buffer_drops_the_oldest(
    client_factory: Callable[..., Client],
) -> None:
    async with client_factory() as client:
        small = await client.subscribe("acme.buf", buffer_size=3)
        large = await client.subscribe("acme.buf")
        for i in range(5):
            await client.publish("acme.buf", i)
        assert [(await next_event(large)).payload for _ in range(5)] == list(range(5))
        # The reader delivered each event to both buffers in the same step.
        assert small.dropped == 2
        assert [(await next_event(small)).payload for _ in range(3)] == [2, 3, 4]


async def test_a_quiet_client_sends_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    pinged = asyncio.Event()

    def spy(conn: Connection, data: bytes | str) -> None:
        if orjson.loads(data).get("cmd") == "ping":
            pinged.set()
        real_handle_frame(conn, data)

    monkeypatch.setattr(ws_transport, "handle_frame", spy)
    config = ServerConfig(port=0, http_port=0, hub=HubConfig(heartbeat_interval=0.05))
    async with Node(config) as node, Client(node.ws_url, **FAST) as client:
        async with asyncio.timeout(10):
            await pinged.wait()
        assert client.connected and client.reconnects == 0


async def test_hello_without_reply_times_out() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as quiet:
        port = quiet.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/v1/ws", ack_timeout=0.2)
        with pytest.raises(TimeoutError):
            await client.connect()
        assert not client.connected
        assert client_tasks() == []
        await client.close()


async def test_commands_before_connect_are_refused() -> None:
    client = Client("ws://127.0.0.1:9/v1/ws")
    with pytest.raises(RuntimeError):
        await client.publish("acme.x", 1)
    with pytest.raises(RuntimeError):
        await client.subscribe("acme.x")
    await client.close()


def test_backoff_doubles_up_to_the_maximum_with_full_jitter() -> None:
    top = Backoff(0.1, 1.0, uniform=lambda: 1.0)
    assert [round(top.next_delay(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    top.reset()
    assert top.next_delay() == pytest.approx(0.1)
    half = Backoff(0.1, 1.0, uniform=lambda: 0.5)
    assert [round(half.next_delay(), 6) for _ in range(3)] == [0.05, 0.1, 0.2]
    bottom = Backoff(0.1, 1.0, uniform=lambda: 0.0)
    assert bottom.next_delay() == 0.0


async def test_a_reconnect_refused_with_too_many_connections_is_retried(
    server: Node, client_factory: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """4429 / too_many_connections means "later" (the old connection may still hold the
    slot): the client keeps trying instead of ending."""
    from agentcast.errors import ClientError

    hub = hub_of(server)
    async with client_factory() as client:
        real_open = client._open
        refusals = 0

        async def refuse_twice() -> None:
            nonlocal refusals
            if refusals < 2:
                refusals += 1
                raise ClientError("limit", code="too_many_connections")
            await real_open()

        monkeypatch.setattr(client, "_open", refuse_twice)
        conn = hub.connections[str(client.connection_id)]
        hub.close(conn, CloseCode.SERVER_ERROR, "drop", flush=False)
        ack = await client.publish("acme.retry", 1)
        assert ack is not None and ack.seq == 1
        assert refusals == 2 and client.reconnects == 1
