"""The sans-I/O mapping of CrewAI events, with real CrewAI event objects and no node."""

from __future__ import annotations

import contextvars
from typing import Any

import crewai.events
import orjson
import pytest
from crewai.events import (
    CrewKickoffStartedEvent,
    KnowledgeRetrievalStartedEvent,
    LLMStreamChunkEvent,
    TaskCompletedEvent,
    crewai_event_bus,
)
from crewai.events.types.llm_events import FunctionCall, ToolCall
from crewai.tasks.task_output import TaskOutput

from agentcast.errors import InvalidTopic
from agentcast.integrations.crewai_mapping import (
    EVENT_CLASSES,
    KINDS,
    CorrelationTracker,
    CrewEventRecord,
    TopicLayout,
    idempotency_key,
    kind_of,
    map_event,
)
from agentcast.integrations.summary import SummaryLimits
from agentcast.protocol.commands import MAX_NAME_LENGTH
from tests.integrations.conftest import CREWAI_WARNINGS
from tests.integrations.crewai_support import crew_run_events

pytestmark = CREWAI_WARNINGS

LAYOUT = TopicLayout("acme", "run-7")
LIMITS = SummaryLimits()


def mapped(event: Any, limits: SummaryLimits = LIMITS) -> CrewEventRecord:
    record = map_event(event, LAYOUT, limits)
    assert record is not None
    return record


def emitted_run() -> list[Any]:
    """A crew run's events after CrewAI's bus filled in their ids and sequence."""
    pairs = crew_run_events()

    def emit_all() -> None:
        for source, event in pairs:
            crewai_event_bus.emit(source, event)

    contextvars.Context().run(emit_all)
    return [event for _, event in pairs]


def test_every_listed_class_exists_and_maps_to_its_kind() -> None:
    for kind, names in EVENT_CLASSES.items():
        for name in names:
            cls = getattr(crewai.events, name)
            assert kind_of(cls.model_fields["type"].default) == kind, name
    assert set(EVENT_CLASSES) == set(KINDS)


def test_other_event_types_are_not_bridged() -> None:
    event = KnowledgeRetrievalStartedEvent()
    assert kind_of(event.type) is None
    assert map_event(event, LAYOUT, LIMITS) is None
    assert map_event(object(), LAYOUT, LIMITS) is None


def test_topics_follow_the_layout_and_are_validated() -> None:
    assert LAYOUT.topic("task") == "acme.run-7.crewai.task"
    assert LAYOUT.pattern == "acme.run-7.crewai.*"
    assert TopicLayout("acme", "s", "fw.crewai").topic("llm") == "acme.s.fw.crewai.llm"
    with pytest.raises(InvalidTopic):
        TopicLayout("acme", "run 7")
    with pytest.raises(InvalidTopic):
        TopicLayout("acme", "s", "bad..prefix")


def test_a_run_maps_ids_causation_and_sequence() -> None:
    events = emitted_run()
    records = [mapped(event) for event in events]
    by_type = {record.event_type: record for record in records}
    kickoff, task = by_type["crew_kickoff_started"], by_type["task_started"]
    agent, tool = by_type["agent_execution_started"], by_type["tool_usage_started"]
    llm = by_type["llm_call_started"]

    assert [r.kind for r in records] == [
        "crew", "task", "agent", "tool", "tool", "llm", "llm", "llm", "llm", "agent", "task", "crew"
    ]  # fmt: skip
    for event, record in zip(events, records, strict=True):
        assert record.topic == f"acme.run-7.crewai.{record.kind}"
        assert record.event_id == event.event_id
        assert record.headers["crewai_event_id"] == event.event_id
        assert record.headers["crewai_event_type"] == event.type
        assert record.headers["crewai_emission_sequence"] == str(event.emission_sequence)
        assert record.idempotency_key == f"crewai/run-7/{event.event_id}"
        assert record.payload["event_id"] == event.event_id
        assert record.payload["timestamp"] == event.timestamp.isoformat()
        orjson.dumps(record.payload)
    sequences = [r.emission_sequence for r in records]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)

    # The cause is the enclosing scope; a completion without one points at its start.
    assert kickoff.causation_id is None
    assert task.causation_id == kickoff.event_id
    assert agent.causation_id == task.event_id
    assert tool.causation_id == agent.event_id
    chunks = [r for r in records if r.event_type == "llm_stream_chunk"]
    assert [c.causation_id for c in chunks] == [llm.event_id, llm.event_id]
    assert by_type["llm_call_completed"].headers["crewai_started_event_id"] == llm.event_id
    assert by_type["tool_usage_finished"].started_event_id == tool.event_id
    completed = by_type["crew_kickoff_completed"]
    assert completed.parent_event_id is None
    assert completed.causation_id == kickoff.event_id
    assert "crewai_parent_event_id" not in completed.headers


def test_payloads_name_tasks_agents_and_outputs() -> None:
    ordered = [mapped(e) for e in emitted_run()]
    records = {r.event_type: r for r in ordered}
    agent = records["agent_execution_started"].payload
    assert agent["agent"]["name"] == "researcher"
    assert agent["task"]["name"] == "define"
    assert agent["task_prompt"] == "?"
    tool = records["tool_usage_finished"].payload
    assert tool["tool_name"] == "lookup"
    assert tool["tool_args"] == {"term": "widget"}
    assert tool["output"] == "widget means a small, well-defined thing"
    chunks = [r.payload["chunk"] for r in ordered if r.event_type == "llm_stream_chunk"]
    assert chunks == ["a widget is ", "a small, well-defined thing"]
    assert records["llm_call_completed"].payload["call_type"] == "llm_call"
    assert records["task_completed"].payload["output"] == "a widget is a small, well-defined thing"
    crew = records["crew_kickoff_started"].payload
    assert crew["crew_name"] == "research"
    assert crew["inputs"] == {"term": "widget"}
    assert "crew" not in crew  # the live Crew object is never copied


def test_outputs_are_truncated_to_the_bound() -> None:
    output = TaskOutput(description="d", agent="a", raw="z" * 10_000)
    record = mapped(TaskCompletedEvent(output=output), SummaryLimits(max_text=100))
    assert len(record.payload["output"]) == 100
    assert len(orjson.dumps(record.payload)) < 2_000


def test_a_stream_chunk_carries_its_tool_call() -> None:
    call = ToolCall(id="t1", index=0, function=FunctionCall(name="lookup", arguments='{"a": 1}'))
    record = mapped(LLMStreamChunkEvent(chunk="", call_id="c", tool_call=call))
    assert record.payload["tool_call"] == {"id": "t1", "name": "lookup", "arguments": '{"a": 1}'}


def test_a_triggering_event_is_the_cause_before_the_parent() -> None:
    event = CrewKickoffStartedEvent(crew_name="c", inputs=None)
    event.parent_event_id = "parent"
    event.triggered_by_event_id = "trigger"
    record = mapped(event)
    assert record.causation_id == "trigger"
    assert record.headers["crewai_triggered_by_event_id"] == "trigger"
    assert record.headers["crewai_parent_event_id"] == "parent"


def test_idempotency_keys_are_scoped_by_session_and_bounded() -> None:
    assert idempotency_key("a", "e1") != idempotency_key("b", "e1")
    long_key = idempotency_key("s" * 64, "e" * 200)
    assert len(long_key) <= MAX_NAME_LENGTH
    assert long_key == idempotency_key("s" * 64, "e" * 200)


def test_correlation_is_the_root_of_the_scope_chain() -> None:
    tracker = CorrelationTracker()
    records = [mapped(event) for event in emitted_run()]
    roots = {tracker.root_of(record) for record in records}
    assert roots == {records[0].event_id}  # the crew_kickoff_started event

    second = [mapped(event) for event in emitted_run()]
    assert {tracker.root_of(record) for record in second} == {second[0].event_id}


def test_an_unseen_parent_becomes_the_root_and_memory_is_bounded() -> None:
    tracker = CorrelationTracker(max_events=2)
    child = CrewEventRecord("task", "t", "c1", "task_started", {}, {}, "k", "p", "outside")
    assert tracker.root_of(child) == "outside"
    grandchild = CrewEventRecord("agent", "t", "g1", "agent_x", {}, {}, "k", "c1", "c1")
    assert tracker.root_of(grandchild) == "outside"
    for index in range(5):
        lone = CrewEventRecord("llm", "t", f"l{index}", "llm_x", {}, {}, "k", None)
        assert tracker.root_of(lone) == f"l{index}"
    assert len(tracker) == 2
