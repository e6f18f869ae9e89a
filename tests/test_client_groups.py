"""The Python SDK's consumer groups against real in-process nodes: shared work, acks, nack
and redelivery, dead letters, members that leave, re-joins after reconnects and node
restarts, and the Worker helper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentcast.client import Client, Envelope, GroupDelivery, GroupSubscription, Worker
from agentcast.client.messages import GroupEvent, decode_server_message
from agentcast.config import ServerConfig
from agentcast.errors import ClientError
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from agentcast.protocol.codes import CloseCode

FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "max_reconnect_attempts": 1000,
}

TOPIC = "acme.jobs"


def group_config(history: str, port: int = 0) -> ServerConfig:
    return ServerConfig(
        port=port,
        http_port=0,
        history=history,
        durable=(DurableRule("acme.>"),),
        retention_interval=3600,
    )


@pytest.fixture(autouse=True)
async def no_orphan_tasks() -> AsyncIterator[None]:
    """Every client and worker a test started has ended its tasks by the end."""
    yield
    running = [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith(("agentcast-client", "agentcast-worker")) and not task.done()
    ]
    assert running == []


@pytest.fixture
async def gnode() -> AsyncIterator[Node]:
    async with Node(group_config("memory")) as node:
        yield node


async def next_delivery(membership: GroupSubscription) -> GroupDelivery:
    async with asyncio.timeout(20):
        return await membership.get()


async def publish_all(client: Client, payloads: Iterable[Any], topic: str = TOPIC) -> None:
    for payload in payloads:
        assert await client.publish(topic, payload) is not None


def group_floor(node: Node, group: str, topic: str = TOPIC) -> int:
    assert node.hub is not None and node.hub.groups is not None
    return node.hub.groups.runners[(topic, group)].group.floor


def drop_connection(node: Node, client: Client) -> None:
    """Close the client's connection from the node with a reconnect code."""
    assert node.hub is not None
    conn = node.hub.connections[str(client.connection_id)]
    node.hub.close(conn, CloseCode.SERVER_ERROR, "dropped by the test", flush=False)


# -- membership and settling -----------------------------------------------------------------


async def test_two_members_share_100_events_each_acked_exactly_once(gnode: Node) -> None:
    async with (
        Client(gnode.ws_url, **FAST) as a,
        Client(gnode.ws_url, **FAST) as b,
        Client(gnode.ws_url, **FAST) as pub,
    ):
        plain = await a.subscribe(TOPIC, dedupe_window=0)
        members = {
            "a": await a.join_group(TOPIC, "workers", max_in_flight=8),
            "b": await b.join_group(TOPIC, "workers"),
        }
        assert members["a"].info is not None and members["a"].info.max_in_flight == 8
        acked: dict[int, str] = {}
        attempts: list[int] = []
        all_acked = asyncio.Event()

        async def consume(name: str, membership: GroupSubscription) -> None:
            async for delivery in membership:
                attempts.append(delivery.attempt)
                assert delivery.seq not in acked, f"{delivery.seq} acked twice"
                assert await delivery.ack() is True
                assert await delivery.ack() is False  # a second ack is a no-op
                acked[delivery.seq] = name
                if len(acked) == 100:
                    all_acked.set()

        async with asyncio.TaskGroup() as tasks:
            for name, membership in members.items():
                tasks.create_task(consume(name, membership))
            await publish_all(pub, range(100))
            async with asyncio.timeout(30):
                await all_acked.wait()
            assert group_floor(gnode, "workers") == 100
            for membership in members.values():
                await membership.leave()

        assert sorted(acked) == list(range(1, 101))
        assert set(acked.values()) == {"a", "b"}
        assert attempts == [1] * 100
        assert a.groups == () and b.groups == ()
        # Group deliveries never reach a plain subscription of the same topic.
        marker = await pub.publish(TOPIC, "marker")
        assert marker is not None
        async with asyncio.timeout(20):
            plain_events = [await plain.get() for _ in range(101)]
        assert [e.seq for e in plain_events] == list(range(1, 102))
        assert plain.pending == 0 and plain.duplicates == 0


async def test_nack_with_a_delay_redelivers_as_attempt_2(gnode: Node) -> None:
    async with Client(gnode.ws_url, **FAST) as client:
        membership = await client.join_group(TOPIC, "nackers", max_in_flight=1)
        ack = await client.publish(TOPIC, "job", headers={"key": "k1"})
        assert ack is not None
        first = await next_delivery(membership)
        assert (first.envelope.id, first.attempt, first.envelope.payload) == (ack.id, 1, "job")
        assert await first.nack(delay=0.2, reason="rate limited") is True
        assert first.settled and await first.ack() is False  # settled once
        second = await next_delivery(membership)
        assert (second.envelope.id, second.attempt) == (ack.id, 2)
        assert await second.ack() is True
        assert group_floor(gnode, "nackers") == 1
        with pytest.raises(ValueError):
            await second.nack(delay=-1)


async def test_an_ack_after_the_delivery_went_to_another_member_is_not_in_flight(
    gnode: Node,
) -> None:
    async with Client(gnode.ws_url, **FAST) as a, Client(gnode.ws_url, **FAST) as b:
        slow = await a.join_group(TOPIC, "timeouts", ack_timeout=0.2)
        other = await b.join_group(TOPIC, "timeouts")
        await publish_all(a, ["job"])
        held = await next_delivery(slow)  # round robin: the first member gets it
        again = await next_delivery(other)  # the ack timeout passed: the next member
        assert (again.envelope.id, again.attempt) == (held.envelope.id, 2)
        with pytest.raises(ClientError) as info:
            await held.ack()
        assert info.value.code == "not_in_flight"
        assert await again.ack() is True
        assert slow.stale_acks == 0


async def test_a_member_that_disconnects_mid_work_hands_its_deliveries_over(
    gnode: Node,
) -> None:
    async with Client(gnode.ws_url, **FAST) as b, Client(gnode.ws_url, **FAST) as pub:
        a = Client(gnode.ws_url, **FAST)
        await a.connect()
        try:
            quitter = await a.join_group(TOPIC, "handover", max_in_flight=5)
            await publish_all(pub, range(10))
            held = [await next_delivery(quitter) for _ in range(5)]
            assert sorted(d.seq for d in held) == [1, 2, 3, 4, 5]
            stayer = await b.join_group(TOPIC, "handover")
            first = [await next_delivery(stayer) for _ in range(5)]
            assert sorted(d.seq for d in first) == [6, 7, 8, 9, 10]
            assert all([await d.ack() for d in first])
        finally:
            await a.close()
        assert not quitter.active
        taken_over = [await next_delivery(stayer) for _ in range(5)]
        assert sorted((d.seq, d.attempt) for d in taken_over) == [(s, 2) for s in range(1, 6)]
        assert all([await d.ack() for d in taken_over])
        assert group_floor(gnode, "handover") == 10
        # The closed client's acks are dropped locally and counted.
        assert [await d.ack() for d in held] == [False] * 5
        assert quitter.stale_acks == 5


async def test_reconnect_to_a_restarted_node_rejoins_and_finishes_the_work(
    tmp_path: Path,
) -> None:
    config = group_config(f"sqlite:///{tmp_path}/h.db")
    first = Node(config)
    await first.start()
    second: Node | None = None
    try:
        async with (
            Client(first.ws_url, **FAST) as worker,
            Client(first.ws_url, **FAST, ack_timeout=30) as pub,
        ):
            await publish_all(pub, range(20))
            membership = await worker.join_group(TOPIC, "restart", max_in_flight=5)
            acked_before: set[int] = set()
            for _ in range(10):
                delivery = await next_delivery(membership)
                assert await delivery.ack() is True
                acked_before.add(delivery.seq)
            held = await next_delivery(membership)  # in hand when the node goes away

            await first.stop()
            second = Node(replace(config, port=first.ws_port))
            await second.start()
            assert await held.ack() is False  # its connection is gone: dropped locally
            assert membership.stale_acks == 1

            redelivered: list[int] = []
            async with asyncio.timeout(30):
                while len(acked_before) + len(redelivered) < 20:
                    delivery = await membership.get()
                    assert delivery.seq not in acked_before
                    assert await delivery.ack() is True
                    redelivered.append(delivery.seq)
            assert sorted(redelivered) == sorted(set(range(1, 21)) - acked_before)
            assert held.seq in redelivered
            assert membership.rejoins == 1 and worker.reconnects == 1
            assert membership.active and membership.info is not None
            assert membership.info.floor == len(acked_before)  # saved at shutdown
            assert group_floor(second, "restart") == 20
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_join_refusals_leave_and_routing(gnode: Node) -> None:
    async with Client(gnode.ws_url, **FAST) as client:
        with pytest.raises(ClientError) as info:
            await client.join_group("other.jobs", "g")
        assert info.value.code == "not_durable"
        with pytest.raises(ClientError) as info:
            await client.join_group("acme.*", "g")
        assert info.value.code == "unsupported"
        assert client.groups == ()
        membership = await client.join_group(TOPIC, "g")
        with pytest.raises(ValueError):
            await client.join_group(TOPIC, "g")
        await client.publish(TOPIC, 1)
        delivery = await next_delivery(membership)
        await membership.leave()
        await membership.leave()  # idempotent
        assert client.groups == () and not membership.active
        assert await delivery.ack() is False  # the membership ended: dropped locally
        assert membership.stale_acks == 1
        with pytest.raises(ClientError) as info:
            await membership.get()
        assert info.value.code == "not_subscribed"
        assert [d async for d in membership] == []
        again = await client.join_group(TOPIC, "g")  # the node took it back
        redelivery = await next_delivery(again)
        assert redelivery.seq == 1
        assert await redelivery.ack() is True


def test_group_deliveries_decode_apart_from_plain_events() -> None:
    event = (
        '{"id":"e1","topic":"acme.jobs","seq":3,"epoch":"x","time":"2000-01-01T00:00:00Z",'
        '"source":"ac://t","payload":1}'
    )
    plain = decode_server_message('{"type":"event","event":' + event + "}")
    assert isinstance(plain, Envelope) and plain.seq == 3
    grouped = decode_server_message(
        '{"type":"event","group":"g","attempt":2,"event":' + event + "}"
    )
    assert isinstance(grouped, GroupEvent)
    assert (grouped.group, grouped.attempt, grouped.envelope.seq) == ("g", 2, 3)


# -- the worker ------------------------------------------------------------------------------


def test_worker_retry_delays_grow_exponentially_up_to_the_cap() -> None:
    worker = Worker(
        Client("ws://127.0.0.1:1/ws"), TOPIC, "g", _noop, retry_initial=0.5, retry_max=3.0
    )
    assert [worker.retry_delay(attempt) for attempt in range(1, 6)] == [0.5, 1, 2, 3, 3]
    assert worker.max_in_flight == worker.concurrency == 1


async def _noop(event: Envelope) -> None:
    return None


async def test_a_handler_that_always_fails_ends_in_the_dead_letter_topic(gnode: Node) -> None:
    async with Client(gnode.ws_url, **FAST) as client, Client(gnode.ws_url, **FAST) as watcher:
        dead = await watcher.subscribe("acme.dead-letter.failing")
        calls: list[int] = []

        async def handler(event: Envelope) -> None:
            calls.append(event.seq)
            raise RuntimeError("tool crashed")

        worker = Worker(client, TOPIC, "failing", handler, max_deliver=3, retry_initial=0.01)
        async with worker:
            ack = await client.publish(TOPIC, "doomed")
            assert ack is not None
            async with asyncio.timeout(30):
                letter = await dead.get()
        assert letter.payload["reason"] == "nack: tool crashed"
        assert letter.headers["reason"] == "nack: tool crashed"
        assert (letter.payload["seq"], letter.payload["attempts"]) == (1, 3)
        assert letter.payload["event"]["id"] == ack.id and letter.causation_id == ack.id
        assert calls == [1, 1, 1]
        assert (worker.failed, worker.nacked, worker.handled, worker.acked) == (3, 3, 0, 0)
        assert worker.membership is not None and not worker.membership.active


async def test_worker_stop_finishes_running_handlers_then_leaves(gnode: Node) -> None:
    async with Client(gnode.ws_url, **FAST) as client, Client(gnode.ws_url, **FAST) as other:
        started: list[int] = []
        finished: list[int] = []
        both_started = asyncio.Event()
        release = asyncio.Event()

        async def handler(event: Envelope) -> None:
            started.append(event.seq)
            if len(started) == 2:
                both_started.set()
            await release.wait()
            finished.append(event.seq)

        await publish_all(other, range(3))
        worker = Worker(client, TOPIC, "stopping", handler, concurrency=2)
        run = asyncio.create_task(worker.run())
        async with asyncio.timeout(20):
            await both_started.wait()
        worker.stop()
        release.set()
        async with asyncio.timeout(20):
            await run
        assert sorted(finished) == [1, 2] and worker.acked == 2
        assert client.groups == ()
        # The third event was never taken: a new member gets its first attempt.
        membership = await other.join_group(TOPIC, "stopping")
        delivery = await next_delivery(membership)
        assert (delivery.seq, delivery.attempt) == (3, 1)
        assert await delivery.ack() is True


async def test_cancelling_work_cancels_the_handler_and_hands_the_event_over(
    gnode: Node,
) -> None:
    async with Client(gnode.ws_url, **FAST) as client, Client(gnode.ws_url, **FAST) as other:
        running = asyncio.Event()
        cancelled = asyncio.Event()

        async def handler(event: Envelope) -> None:
            running.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        await publish_all(other, ["job"])
        work = asyncio.create_task(client.work(TOPIC, "cancel", handler))
        async with asyncio.timeout(20):
            await running.wait()  # the only member holds the event
        membership = await other.join_group(TOPIC, "cancel")
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        assert cancelled.is_set() and client.groups == ()
        delivery = await next_delivery(membership)
        assert (delivery.seq, delivery.attempt) == (1, 2)  # the member left: at once
        assert await delivery.ack() is True


async def test_idempotent_worker_rejoins_after_a_drop_and_skips_the_redelivery(
    gnode: Node, tmp_path: Path
) -> None:
    async with Client(gnode.ws_url, **FAST) as client, Client(gnode.ws_url, **FAST) as pub:
        handled: list[int] = []
        second_handled = asyncio.Event()

        async def handler(event: Envelope) -> None:
            handled.append(event.seq)
            if event.seq == 1:
                # Lose the connection before the ack: the node takes the delivery back.
                drop_connection(gnode, client)
                await client.ping()  # answered on the next connection
            else:
                second_handled.set()

        worker = Worker(client, TOPIC, "idem", handler, idempotent=tmp_path / "ids.db")
        async with worker:
            await publish_all(pub, ["first", "second"])
            async with asyncio.timeout(30):
                await second_handled.wait()
        membership = worker.membership
        assert membership is not None and worker.idempotent_handler is not None
        assert handled == [1, 2]  # the redelivery of 1 was skipped, not handled again
        assert worker.idempotent_handler.skipped == 1
        assert membership.stale_acks == 1 and membership.rejoins == 1
        assert (worker.handled, worker.acked) == (3, 2)


async def test_progress_of_a_group_created_before_the_first_event_survives_a_restart(
    tmp_path: Path,
) -> None:
    config = group_config(f"sqlite:///{tmp_path}/h.db")
    async with Node(config) as node, Client(node.ws_url, **FAST, reconnect=False) as client:
        membership = await client.join_group(TOPIC, "early")
        await publish_all(client, range(2))
        assert [await (await next_delivery(membership)).ack() for _ in range(2)] == [True] * 2
    async with Node(config) as node, Client(node.ws_url, **FAST) as client:
        membership = await client.join_group(TOPIC, "early")
        assert membership.info is not None
        assert membership.info.floor == 2


async def test_closing_the_client_ends_a_running_worker(gnode: Node) -> None:
    client = Client(gnode.ws_url, **FAST)
    await client.connect()
    try:
        worker = Worker(client, TOPIC, "closing", _noop)
        run = asyncio.create_task(worker.run())
        async with asyncio.timeout(20):
            await worker.joined.wait()
    finally:
        await client.close()
    async with asyncio.timeout(20):
        await run  # returns: a closed client is a requested end
    assert worker.membership is not None and not worker.membership.active
