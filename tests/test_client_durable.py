"""The Python SDK on durable topics: positions, resume on reconnect, dedupe, publish retries
and the idempotent handler, against real in-process nodes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

import agentcast.transport.ws as ws_transport
from agentcast.client import (
    Client,
    Envelope,
    IdempotentHandler,
    Position,
    PublishAck,
    SqliteProcessedIds,
    Subscription,
    idempotent,
)
from agentcast.client.dedupe import IdWindow
from agentcast.config import ServerConfig
from agentcast.errors import ClientError, Overloaded
from agentcast.hub.connection import Connection
from agentcast.hub.dispatch import handle_frame as real_handle_frame
from agentcast.hub.durability import DurableRule, GapPolicy
from agentcast.hub.durable_log import OnDone
from agentcast.node import Node
from agentcast.protocol.codes import CloseCode
from agentcast.storage.base import AppendResult, EventDraft

FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "max_reconnect_attempts": 1000,
}

RULES = (
    DurableRule("acme.durable.>", max_events=100_000),
    DurableRule("acme.strict.>", max_events=5, on_gap=GapPolicy.REFUSE),
)


def durable_config(history: str, port: int = 0) -> ServerConfig:
    return ServerConfig(
        port=port, http_port=0, history=history, durable=RULES, retention_interval=3600
    )


@pytest.fixture(autouse=True)
async def no_orphan_tasks() -> AsyncIterator[None]:
    """Every client a test opened has ended its reader and supervisor by the end."""
    yield
    running = [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("agentcast-client") and not task.done()
    ]
    assert running == []


@pytest.fixture(params=["memory", "sqlite"])
async def dnode(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    history = "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/h.db"
    async with Node(durable_config(history)) as node:
        yield node


class Sessions:
    """Counts the sessions a client restores (each reconnect), optionally holding them
    back until :meth:`release`."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch, *, hold: bool) -> None:
        self.restored = 0
        self._changed = asyncio.Event()
        self._gate = asyncio.Event()
        if not hold:
            self._gate.set()
        real_open = client._open

        async def open_when_released() -> None:
            await self._gate.wait()
            await real_open()
            self.restored += 1
            self._changed.set()

        monkeypatch.setattr(client, "_open", open_when_released)

    def release(self) -> None:
        self._gate.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(30):
            while self.restored < count:
                self._changed.clear()
                await self._changed.wait()


class HelloSpy:
    """Records the ``hello`` commands a node receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hellos: list[dict[str, Any]] = []

        def spy(conn: Connection, data: bytes | str) -> None:
            command = orjson.loads(data)
            if command.get("cmd") == "hello":
                self.hellos.append(command)
            real_handle_frame(conn, data)

        monkeypatch.setattr(ws_transport, "handle_frame", spy)


async def next_event(sub: Subscription) -> Envelope:
    async with asyncio.timeout(20):
        return await sub.get()


async def publish_many(client: Client, topic: str, payloads: Iterable[Any]) -> list[PublishAck]:
    """Acked publishes, 500 in flight at a time; the acks in ``seq`` order."""
    items = list(payloads)
    acks: list[PublishAck] = []
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        results = await asyncio.gather(*(client.publish(topic, p) for p in chunk))
        acks.extend(a for a in results if a is not None)
    assert len(acks) == len(items)
    return sorted(acks, key=lambda ack: ack.seq)


def drop_connection(node: Node, client: Client) -> None:
    """Close the client's connection from the node with a reconnect code."""
    assert node.hub is not None
    conn = node.hub.connections[str(client.connection_id)]
    node.hub.close(conn, CloseCode.SERVER_ERROR, "dropped by the test", flush=False)


# -- positions and history options ---------------------------------------------------------


async def test_subscribe_passes_history_options_and_exposes_recovery(dnode: Node) -> None:
    topic = "acme.durable.opts"
    async with Client(dnode.ws_url, **FAST) as client:
        acks = await publish_many(client, topic, range(30))
        epoch = acks[0].epoch

        last = await client.subscribe(topic, last=4)
        assert last.recovered is True
        assert [(await next_event(last)).seq for _ in range(4)] == [27, 28, 29, 30]
        assert last.position == Position(epoch, 30)

        since = await client.subscribe(topic, since={"epoch": epoch, "seq": 25})
        assert since.recovered is True and since.gaps == 0
        assert [(await next_event(since)).payload for _ in range(5)] == [25, 26, 27, 28, 29]

        timed = await client.subscribe(topic, since_time="2000-01-01T00:00:00Z")
        assert [(await next_event(timed)).seq for _ in range(30)] == list(range(1, 31))

        lost = await client.subscribe(topic, since=Position("another-epoch", 3))
        assert lost.recovered is False and lost.gaps == 1
        assert lost.position == Position(epoch, 30)  # the node's position: live from here
        ack = await client.publish(topic, "live")
        assert ack is not None
        assert (await next_event(lost)).id == ack.id
        assert lost.position == Position(epoch, 31)

        live = await client.subscribe("acme.plain.opts")
        assert live.recovered is None and live.position is None
        wildcard = await client.subscribe("acme.durable.>")
        await client.publish(topic, "again")
        assert (await next_event(wildcard)).payload == "again"
        assert wildcard.position is None  # patterns keep no position

        with pytest.raises(ClientError) as info:
            await client.subscribe("acme.plain.opts", last=3)
        assert info.value.code == "not_durable"
        with pytest.raises(ClientError) as info:
            await client.subscribe("acme.durable.*", since=Position(epoch, 1))
        assert info.value.code == "unsupported"
        with pytest.raises(ValueError):
            await client.subscribe(topic, since={"epoch": epoch, "seq": -1})
        with pytest.raises(ValueError):
            await client.subscribe(topic, last=2, since_time="2000-01-01T00:00:00Z")


# -- resume on reconnect -------------------------------------------------------------------


async def test_resume_after_a_restart_on_the_same_file_gets_exactly_the_missed_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = "acme.durable.restart"
    config = durable_config(f"sqlite:///{tmp_path}/h.db")
    first = Node(config)
    await first.start()
    second: Node | None = None
    spy = HelloSpy(monkeypatch)
    try:
        async with (
            Client(first.ws_url, **FAST) as subscriber,
            Client(first.ws_url, **FAST, ack_timeout=30) as publisher,
        ):
            sub = await subscriber.subscribe(topic)
            before = await publish_many(publisher, topic, range(10))
            assert [(await next_event(sub)).seq for _ in range(10)] == list(range(1, 11))
            epoch = before[0].epoch
            assert sub.position == Position(epoch, 10)

            sessions = Sessions(subscriber, monkeypatch, hold=True)
            await first.stop()
            second = Node(replace(config, port=first.ws_port))
            await second.start()
            # The subscriber stays away while 10,000 events are published.
            missed = await publish_many(publisher, topic, range(10, 10_010))
            assert {ack.epoch for ack in missed} == {epoch}  # same file, same history
            sessions.release()
            await sessions.wait_for(1)

            assert spy.hellos[-1]["resume"] == {topic: {"epoch": epoch, "seq": 10}}
            assert sub.recovered is True and sub.gaps == 0
            events = [await next_event(sub) for _ in range(10_000)]
            assert [e.seq for e in events] == list(range(11, 10_011))
            assert [e.id for e in events] == [ack.id for ack in missed]
            live = await publisher.publish(topic, "live")
            assert live is not None
            assert (await next_event(sub)).id == live.id
            assert (sub.pending, sub.duplicates, sub.dropped) == (0, 0, 0)
            assert sub.position == Position(epoch, 10_011)
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_resume_after_a_restart_with_a_memory_store_reports_a_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = "acme.durable.gap"
    config = durable_config("memory")
    first = Node(config)
    await first.start()
    second: Node | None = None
    try:
        async with Client(first.ws_url, **FAST) as subscriber, Client(first.ws_url, **FAST) as pub:
            sub = await subscriber.subscribe(topic)
            before = await publish_many(pub, topic, range(5))
            assert [(await next_event(sub)).seq for _ in range(5)] == [1, 2, 3, 4, 5]
            sessions = Sessions(subscriber, monkeypatch, hold=False)
            await first.stop()
            second = Node(replace(config, port=first.ws_port))
            await second.start()
            await sessions.wait_for(1)
            assert sub.recovered is False and sub.gaps == 1
            ack = await pub.publish(topic, "new history")
            assert ack is not None
            assert ack.epoch != before[0].epoch and ack.seq == 1  # the history was lost
            event = await next_event(sub)
            assert (event.id, event.seq) == (ack.id, 1)
            assert sub.position == Position(ack.epoch, 1)
            assert sub.active and sub.gaps == 1
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_one_reconnect_restores_resumed_renewed_and_wildcard_subscriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = durable_config(f"sqlite:///{tmp_path}/h.db")
    first = Node(config)
    await first.start()
    second: Node | None = None
    spy = HelloSpy(monkeypatch)
    try:
        async with Client(first.ws_url, **FAST) as subscriber, Client(first.ws_url, **FAST) as pub:
            plain = await subscriber.subscribe("acme.durable.a")
            custom = await subscriber.subscribe("acme.durable.b", policy="drop_oldest")
            wildcard = await subscriber.subscribe("acme.durable.*")
            for topic in ("acme.durable.a", "acme.durable.b"):
                await pub.publish(topic, "before")
            assert (await next_event(plain)).payload == "before"
            assert (await next_event(custom)).payload == "before"
            assert [(await next_event(wildcard)).payload for _ in range(2)] == ["before"] * 2

            sessions = Sessions(subscriber, monkeypatch, hold=True)
            await first.stop()
            second = Node(replace(config, port=first.ws_port))
            await second.start()
            missed_a = await publish_many(pub, "acme.durable.a", range(20))
            missed_b = await publish_many(pub, "acme.durable.b", range(20))
            sessions.release()
            await sessions.wait_for(1)

            # Only the topic with default options rides in the hello.
            assert set(spy.hellos[-1]["resume"]) == {"acme.durable.a"}
            assert [(await next_event(plain)).id for _ in range(20)] == [a.id for a in missed_a]
            assert [(await next_event(custom)).id for _ in range(20)] == [a.id for a in missed_b]
            assert plain.recovered is True and custom.recovered is True
            live = await pub.publish("acme.durable.b", "live")
            assert live is not None
            assert (await next_event(custom)).id == live.id
            # The wildcard was renewed live, but events are routed by topic: it also gets
            # the replays of the two exact topics, each in order, and no duplicate.
            seen = [await next_event(wildcard) for _ in range(41)]
            for topic, acks in (("acme.durable.a", missed_a), ("acme.durable.b", missed_b)):
                ids = [e.id for e in seen if e.topic == topic]
                assert ids == [a.id for a in acks] + ([live.id] if topic.endswith("b") else [])
            assert wildcard.pending == 0
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_a_topic_the_node_calls_not_durable_is_renewed_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = HelloSpy(monkeypatch)
    async with Node(durable_config("memory")) as node, Client(node.ws_url, **FAST) as client:
        sub = await client.subscribe("acme.plain.x")
        await client.publish("acme.plain.x", 1)
        assert (await next_event(sub)).payload == 1
        assert sub.position is not None  # exact topics track a position either way
        sessions = Sessions(client, monkeypatch, hold=False)

        drop_connection(node, client)
        await sessions.wait_for(1)
        assert set(spy.hellos[-1]["resume"]) == {"acme.plain.x"}
        assert sub.durable is False and sub.recovered is None and sub.gaps == 0
        await client.publish("acme.plain.x", 2)
        assert (await next_event(sub)).payload == 2

        drop_connection(node, client)
        await sessions.wait_for(2)
        assert "resume" not in spy.hellos[-1]  # known to be ephemeral now
        await client.publish("acme.plain.x", 3)
        assert (await next_event(sub)).payload == 3


async def test_position_lost_surfaces_on_the_iterator(monkeypatch: pytest.MonkeyPatch) -> None:
    topic = "acme.strict.t"
    async with (
        Node(durable_config("memory")) as node,
        Client(node.ws_url, **FAST) as subscriber,
        Client(node.ws_url, **FAST) as pub,
    ):
        sub = await subscriber.subscribe(topic)
        await publish_many(pub, topic, range(3))
        assert [(await next_event(sub)).seq for _ in range(3)] == [1, 2, 3]
        other = await subscriber.subscribe("acme.durable.ok")
        sessions = Sessions(subscriber, monkeypatch, hold=True)
        drop_connection(node, subscriber)
        await publish_many(pub, topic, range(20))
        assert node.history is not None
        await node.history.trim(topic, 5, None)  # positions 1..18 are gone
        sessions.release()
        await sessions.wait_for(1)
        with pytest.raises(ClientError) as info:
            await next_event(sub)
        assert info.value.code == "position_lost"
        assert not sub.active
        ack = await pub.publish("acme.durable.ok", "fine")  # the others are not disturbed
        assert ack is not None
        assert (await next_event(other)).id == ack.id


# -- dedupe ----------------------------------------------------------------------------------


async def test_a_replay_overlapping_delivered_events_is_deduplicated(dnode: Node) -> None:
    topic = "acme.durable.dup"
    async with Client(dnode.ws_url, **FAST) as client:
        first = await client.subscribe(topic)
        acks = await publish_many(client, topic, range(5))
        assert [(await next_event(first)).seq for _ in range(5)] == [1, 2, 3, 4, 5]
        # A second subscription of the same topic asks the node for a replay from seq 2:
        # the connection receives 3, 4 and 5 again.
        second = await client.subscribe(topic, since=Position(acks[0].epoch, 2))
        assert [(await next_event(second)).seq for _ in range(3)] == [3, 4, 5]
        marker = await client.publish(topic, "marker")
        assert marker is not None
        assert (await next_event(first)).id == marker.id  # not 3, 4, 5 a second time
        assert first.duplicates == 3 and second.duplicates == 0
        assert first.position == Position(acks[0].epoch, 6)


class _Owner:
    async def _release(self, subscription: Subscription) -> None:
        subscription.end()


def envelope(event_id: str, seq: int) -> Envelope:
    return Envelope(event_id, "acme.w", seq, "e1", "2000-01-01T00:00:00Z", "ac://test")


async def test_the_dedupe_window_is_bounded() -> None:
    sub = Subscription(_Owner(), "acme.w", dedupe_window=2)
    for event_id, seq in [("a", 1), ("b", 2), ("b", 2), ("c", 3), ("a", 1), ("c", 3)]:
        sub.deliver(envelope(event_id, seq))
    # "a" left the two-id window when "c" came, so its second copy got through.
    assert [sub.get_nowait() for _ in range(4)] == [
        envelope("a", 1),
        envelope("b", 2),
        envelope("c", 3),
        envelope("a", 1),
    ]
    assert sub.duplicates == 2
    assert sub.position == Position("e1", 3)  # never moves back within an epoch
    window = IdWindow(3)
    assert [window.add(x) for x in "abcadb"] == [True, True, True, False, True, False]
    assert len(window) == 3 and "a" not in window and "d" in window
    off = IdWindow(0)
    assert off.add("a") and off.add("a") and len(off) == 0


# -- publish retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["unavailable", "overloaded"])
async def test_a_publish_refused_for_a_passing_reason_is_retried_with_its_key(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    topic = "acme.durable.retry"
    async with Node(durable_config("memory")) as node, Client(node.ws_url, **FAST) as client:
        assert node.history is not None and node.hub is not None
        durable_log = node.hub.durable_log
        assert durable_log is not None
        sub = await client.subscribe(topic)
        attempts = 0
        if failure == "unavailable":
            real_append = node.history.append

            async def append_failing_once(drafts: list[EventDraft]) -> list[AppendResult]:
                nonlocal attempts
                attempts += 1
                if attempts == 1:
                    raise OSError("disk hiccup")
                return await real_append(drafts)

            monkeypatch.setattr(node.history, "append", append_failing_once)
        else:
            real_submit = durable_log.submit_callback

            def submit_refusing_once(draft: EventDraft, on_done: OnDone) -> None:
                nonlocal attempts
                attempts += 1
                if attempts == 1:
                    raise Overloaded("too many pending")
                real_submit(draft, on_done)

            monkeypatch.setattr(durable_log, "submit_callback", submit_refusing_once)
        ack = await client.publish(topic, "once", idempotency_key="retry-1")
        assert ack is not None
        assert (ack.seq, ack.duplicate) == (1, False)
        assert attempts == 2 and client.publish_retries == 1
        event = await next_event(sub)
        assert (event.id, event.payload) == (ack.id, "once")
        with pytest.raises(ClientError) as info:  # other refusals are not retried
            await client.publish("acme.durable.*", 1)
        assert info.value.code == "wildcard_publish"
        assert client.publish_retries == 1


async def test_a_publish_still_refused_at_the_deadline_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Node(durable_config("memory")) as node:
        assert node.history is not None
        attempts = 0

        async def always_failing(drafts: list[EventDraft]) -> list[AppendResult]:
            nonlocal attempts
            attempts += 1
            raise OSError("disk gone")

        monkeypatch.setattr(node.history, "append", always_failing)
        async with Client(node.ws_url, **FAST, ack_timeout=0.5) as client:
            with pytest.raises((ClientError, TimeoutError)) as info:
                await client.publish("acme.durable.fail", 1)
            if isinstance(info.value, ClientError):
                assert info.value.code == "unavailable"
            # Each retry sent the publish again; the last one may still be on its way.
            assert client.publish_retries >= 1
            assert attempts in (client.publish_retries, client.publish_retries + 1)


# -- idempotent handler -------------------------------------------------------------------------


async def test_the_idempotent_handler_skips_a_redelivered_id() -> None:
    handled: list[str] = []

    @idempotent(window=2)
    async def handle(event: Envelope) -> None:
        handled.append(event.id)

    assert isinstance(handle, IdempotentHandler)
    assert await handle(envelope("a", 1)) is True
    assert await handle(envelope("a", 1)) is False
    assert await handle(envelope("b", 2)) is True
    assert await handle(envelope("c", 3)) is True
    assert await handle(envelope("a", 1)) is True  # forgotten: past the two-id window
    assert handled == ["a", "b", "c", "a"]
    assert (handle.handled, handle.skipped) == (4, 1)


async def test_a_failed_handler_is_run_again_and_concurrent_copies_run_once() -> None:
    runs = 0
    release = asyncio.Event()
    fail = True

    async def work(event: Envelope) -> None:
        nonlocal runs
        runs += 1
        if fail:
            raise RuntimeError("boom")
        await release.wait()

    handler = IdempotentHandler(work)
    with pytest.raises(RuntimeError):
        await handler(envelope("x", 1))
    assert not handler.seen("x")  # not recorded: the next delivery runs it again
    fail = False
    first = asyncio.ensure_future(handler(envelope("x", 1)))
    second = asyncio.ensure_future(handler(envelope("x", 1)))
    release.set()
    assert list(await asyncio.gather(first, second)) == [True, False]
    assert runs == 2 and handler.seen("x")


async def test_the_idempotent_handler_remembers_across_a_reopen_of_its_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    handled: list[str] = []

    async def record(event: Envelope) -> None:
        handled.append(event.id)

    with IdempotentHandler(record, path=path, window=3) as handler:
        for event_id in ("a", "b", "c"):
            assert await handler(envelope(event_id, 1)) is True
        assert await handler(envelope("b", 1)) is False
    with IdempotentHandler(record, path=path, window=3) as reopened:
        assert [await reopened(envelope(i, 1)) for i in ("a", "b", "c")] == [False] * 3
        assert await reopened(envelope("d", 1)) is True  # "a" now leaves the window
        assert await reopened(envelope("a", 1)) is True
    assert handled == ["a", "b", "c", "d", "a"]
    assert (reopened.handled, reopened.skipped) == (2, 3)


async def test_the_effect_and_the_id_record_commit_together(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    store = SqliteProcessedIds(path)
    store.connection.execute("CREATE TABLE totals (id TEXT, amount INTEGER)")
    store.connection.commit()
    crash = True

    async def add(event: Envelope) -> None:
        store.connection.execute("INSERT INTO totals VALUES (?, ?)", (event.id, event.payload))
        if crash:
            raise RuntimeError("crashed after the write")

    handler = IdempotentHandler(add, store=store)
    event = Envelope("e-1", "acme.t", 1, "e", "2000-01-01T00:00:00Z", "ac://t", payload=7)
    with pytest.raises(RuntimeError):
        await handler(event)
    crash = False
    assert await handler(event) is True
    assert await handler(event) is False
    handler.close()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT id, amount FROM totals").fetchall() == [("e-1", 7)]
        assert check.execute("SELECT id FROM agentcast_processed").fetchall() == [("e-1",)]
    check.close()


async def test_a_last_n_subscription_resumes_from_the_reply_position(
    dnode: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events published while a `last=N` subscription that has seen nothing yet is
    disconnected are not lost: it resumes from the node's position at its reply."""
    topic = "acme.durable.lastn"
    async with Client(dnode.ws_url, **FAST) as reader, Client(dnode.ws_url, **FAST) as writer:
        sub = await reader.subscribe(topic, last=5)
        assert sub.recovered is True and sub.position is not None
        sessions = Sessions(reader, monkeypatch, hold=True)
        drop_connection(dnode, reader)
        await publish_many(writer, topic, range(20))
        sessions.release()
        await sessions.wait_for(1)
        got = [(await next_event(sub)).payload for _ in range(20)]
        assert got == list(range(20)) and sub.gaps == 0


async def test_a_live_subscription_to_a_durable_topic_resumes_before_its_first_event(
    dnode: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = "acme.durable.live"
    async with Client(dnode.ws_url, **FAST) as reader, Client(dnode.ws_url, **FAST) as writer:
        await publish_many(writer, topic, range(3))  # history the subscription must not get
        sub = await reader.subscribe(topic)
        assert sub.recovered is True and sub.position is not None and sub.position.seq == 3
        sessions = Sessions(reader, monkeypatch, hold=True)
        drop_connection(dnode, reader)
        await publish_many(writer, topic, range(3, 23))
        sessions.release()
        await sessions.wait_for(1)
        got = [(await next_event(sub)).payload for _ in range(20)]
        assert got == list(range(3, 23)) and sub.gaps == 0
