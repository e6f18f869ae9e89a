"""The CrewAI listener end to end: real CrewAI events emitted through CrewAI's event bus, a
real node, and a subscriber on the session's topics."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest
from crewai.events import crewai_event_bus
from crewai.events.event_context import triggered_by_scope

from agentcast.client import Client, Envelope
from agentcast.config import ServerConfig
from agentcast.errors import InvalidTopic
from agentcast.hub.config import HubConfig
from agentcast.hub.durability import DurableRule
from agentcast.integrations.crewai import (
    AgentcastCrewListener,
    crewai_event_classes,
)
from agentcast.integrations.crewai import crewai_event_bus as crewai_bus
from agentcast.integrations.summary import SummaryLimits
from agentcast.node import Node
from tests.integrations.conftest import CREWAI_WARNINGS
from tests.integrations.crewai_support import crew_run_events, next_event

pytestmark = CREWAI_WARNINGS


def emit(pairs: list[tuple[Any, Any]]) -> None:
    """Emit ``pairs`` through CrewAI's bus from this thread, in a context of their own."""

    def emit_all() -> None:
        for source, event in pairs:
            crewai_event_bus.emit(source, event)

    contextvars.Context().run(emit_all)


async def receive(client: Client, pattern: str, count: int, run: Any) -> list[Envelope]:
    """Subscribe to ``pattern``, await ``run()``, then return the next ``count`` events."""
    sub = await client.subscribe(pattern)
    await run()
    return [await next_event(sub) for _ in range(count)]


async def test_a_crew_run_arrives_in_emission_order_with_its_causes(node: Node) -> None:
    pairs = crew_run_events()
    events = [event for _, event in pairs]
    async with (
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="run-1") as listener,
    ):

        async def run() -> None:
            await asyncio.to_thread(emit, pairs)
            await listener.flush()

        got = await receive(observer, listener.layout.pattern, len(events), run)

    assert [e.headers["crewai_event_id"] for e in got] == [event.event_id for event in events]
    assert [e.payload["type"] for e in got] == [event.type for event in events]
    assert [e.topic for e in got] == [f"acme.run-1.crewai.{e.payload['kind']}" for e in got]
    sequences = [int(e.headers["crewai_emission_sequence"]) for e in got]
    assert sequences == sorted(sequences)
    kickoff = events[0].event_id
    assert {e.correlation_id for e in got} == {kickoff}
    causes = {event.event_id: event for event in events}
    for envelope, event in zip(got, events, strict=True):
        expected = event.triggered_by_event_id or event.parent_event_id or event.started_event_id
        assert envelope.causation_id == expected
        if envelope.causation_id is not None:
            assert envelope.causation_id in causes  # every cause was published before it
    assert got[1].causation_id == kickoff  # the task started inside the crew run
    stats = listener.stats
    assert (stats.queued, stats.published, stats.dropped, stats.failed) == (12, 12, 0, 0)


async def test_an_event_emitted_twice_is_delivered_once(node: Node) -> None:
    pairs = crew_run_events()
    crew, kickoff = pairs[0]
    llm, chunk = pairs[6]
    _, sentinel = pairs[7]
    async with Client(node.ws_url) as client, Client(node.ws_url) as observer:
        async with AgentcastCrewListener(client, tenant="acme", session="run-2") as listener:

            async def run() -> None:
                await asyncio.to_thread(
                    emit, [(crew, kickoff), (llm, chunk), (llm, chunk), (llm, sentinel)]
                )
                await listener.flush()

            got = await receive(observer, listener.layout.pattern, 3, run)
        assert client.connected  # the caller's client is the caller's to close
    assert (listener.stats.published, listener.stats.duplicates) == (4, 1)
    ids = [e.headers["crewai_event_id"] for e in got]
    assert ids == [kickoff.event_id, chunk.event_id, sentinel.event_id]


async def test_a_triggering_event_becomes_the_cause(node: Node) -> None:
    pairs = crew_run_events()
    trigger_source, trigger = pairs[0]
    source, triggered = pairs[1]

    def emit_triggered() -> None:
        crewai_event_bus.emit(trigger_source, trigger)
        with triggered_by_scope(trigger.event_id):
            crewai_event_bus.emit(source, triggered)

    async with (
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="run-3") as listener,
    ):

        async def run() -> None:
            await asyncio.to_thread(lambda: contextvars.Context().run(emit_triggered))
            await listener.flush()

        first, second = await receive(observer, listener.layout.pattern, 2, run)
    assert first.headers["crewai_event_id"] == trigger.event_id
    assert second.headers["crewai_triggered_by_event_id"] == trigger.event_id
    assert second.causation_id == trigger.event_id


async def test_a_full_queue_drops_and_counts_without_waiting(node: Node) -> None:
    pairs = crew_run_events()
    async with (
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="run-4", max_queue=2) as listener,
    ):
        sub = await observer.subscribe(listener.layout.pattern)
        # Offered from the loop's own thread: the publisher cannot run until this returns,
        # so the third and later events find the queue full. A blocking offer would hang.
        results = [listener.offer(event) for _, event in pairs[:6]]
        assert results == [True, True, False, False, False, False]
        assert (listener.stats.queued, listener.stats.dropped) == (2, 4)
        await listener.flush()
        _, last = pairs[-1]
        assert listener.offer(last)  # room again once published
        await listener.flush()
        got = [await next_event(sub) for _ in range(3)]
    assert [e.headers["crewai_event_id"] for e in got] == [
        pairs[0][1].event_id,
        pairs[1][1].event_id,
        last.event_id,
    ]
    assert listener.stats.published == 3


async def test_after_close_the_listener_is_off_the_bus(node: Node) -> None:
    pairs = crew_run_events()
    listener = AgentcastCrewListener(node.ws_url, tenant="acme", session="run-5", kinds=["crew"])
    await listener.start()
    assert listener.started
    await asyncio.to_thread(emit, pairs)
    await listener.flush()
    assert listener.stats.published == 2  # only the crew kind: kickoff started and completed
    await listener.aclose()
    assert not listener.started
    assert listener.client.connected is False
    await asyncio.to_thread(emit, crew_run_events())
    await asyncio.to_thread(crewai_event_bus.flush)
    stats = listener.stats
    assert (stats.queued, stats.dropped, stats.published) == (2, 0, 2)
    await listener.aclose()  # idempotent


async def test_durable_topics_keep_the_run_for_late_readers() -> None:
    config = ServerConfig(
        port=0, http_port=0, history="memory", durable=(DurableRule("acme.kept.>"),)
    )
    pairs = crew_run_events()
    async with (
        Node(config) as node,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="kept") as listener,
    ):
        await asyncio.to_thread(emit, pairs)
        await listener.flush()
        async with Client(node.ws_url) as late:
            sub = await late.subscribe(listener.layout.topic("llm"), last=10)
            got = [await next_event(sub) for _ in range(4)]
    llm_events = [event for _, event in pairs if event.type.startswith("llm_")]
    assert [e.headers["crewai_event_id"] for e in got] == [e.event_id for e in llm_events]
    assert [e.seq for e in got] == [1, 2, 3, 4]


async def test_a_burst_of_stream_chunks_keeps_its_order(node: Node) -> None:
    from crewai.events import LLMStreamChunkEvent

    chunks = [LLMStreamChunkEvent(chunk=f"token-{i} ", call_id="burst") for i in range(300)]
    async with (
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="burst") as listener,
    ):

        async def run() -> None:
            await asyncio.to_thread(emit, [(None, chunk) for chunk in chunks])
            await listener.flush()

        got = await receive(observer, listener.layout.topic("llm"), len(chunks), run)
    assert [e.payload["chunk"] for e in got] == [chunk.chunk for chunk in chunks]
    assert [e.seq for e in got] == sorted(e.seq for e in got)


async def test_a_refused_publish_is_counted_and_the_stream_goes_on() -> None:
    from crewai.events import TaskCompletedEvent
    from crewai.tasks.task_output import TaskOutput

    config = ServerConfig(port=0, http_port=0, hub=HubConfig(max_payload_bytes=4096))
    big = TaskCompletedEvent(output=TaskOutput(description="d", agent="a", raw="z" * 10_000))
    pairs = [pair for pair in crew_run_events() if pair[1].type != "task_completed"]
    limits = SummaryLimits(max_text=8000)
    async with (
        Node(config) as node,
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="big", limits=limits) as lst,
    ):

        async def run() -> None:
            await asyncio.to_thread(emit, [(None, big), *pairs])
            await lst.flush()

        got = await receive(observer, lst.layout.pattern, len(pairs), run)
    assert [e.headers["crewai_event_id"] for e in got] == [event.event_id for _, event in pairs]
    assert (lst.stats.failed, lst.stats.published) == (1, len(pairs))


def test_a_missing_crewai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "crewai.events", None)
    with pytest.raises(ImportError, match=r"agentcast\[crewai\]"):
        crewai_bus()
    with pytest.raises(ImportError, match=r"agentcast\[crewai\]"):
        crewai_event_classes(["crew"])


def test_options_are_checked_when_the_listener_is_made() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        AgentcastCrewListener("ws://127.0.0.1:1", tenant="acme", session="s", kinds=["crews"])
    with pytest.raises(ValueError, match="max_queue"):
        AgentcastCrewListener("ws://127.0.0.1:1", tenant="acme", session="s", max_queue=0)
    with pytest.raises(InvalidTopic):
        AgentcastCrewListener(
            "ws://127.0.0.1:1", tenant="acme", session="a.b.c.d.e.f.g.h.i.j.k.l.m.n"
        )


async def test_a_listener_is_started_once(node: Node) -> None:
    listener = AgentcastCrewListener(node.ws_url, tenant="acme", session="once")
    assert not listener.offer(crew_run_events()[0][1])  # not started: nothing queued
    async with listener:
        with pytest.raises(RuntimeError, match="started once"):
            await listener.start()
    with pytest.raises(RuntimeError, match="started once"):
        await listener.start()


async def test_replayed_events_are_deduplicated_or_skipped(node: Node) -> None:
    source, event = crew_run_events()[0]
    async with (
        AgentcastCrewListener(node.ws_url, tenant="acme", session="replay-on") as keeps,
        AgentcastCrewListener(
            node.ws_url, tenant="acme", session="replay-off", replays=False
        ) as skips,
    ):
        await asyncio.to_thread(emit, [(source, event)])
        await asyncio.to_thread(crewai_event_bus.replay, source, event)
        await keeps.flush()
        await skips.flush()
    assert (keeps.stats.published, keeps.stats.duplicates) == (2, 1)
    assert (skips.stats.published, skips.stats.ignored) == (1, 1)
