"""A real crew run (scripted LLM, one tool, no network) published through the listener."""

from __future__ import annotations

import asyncio

from agentcast.client import Client
from agentcast.integrations.crewai import AgentcastCrewListener
from agentcast.node import Node
from tests.integrations.conftest import CREWAI_WARNINGS
from tests.integrations.crewai_support import next_event, research_crew

pytestmark = CREWAI_WARNINGS

# What the run emits, flow events of CrewAI's inner agent executor left out.
EXPECTED = [
    "crew_kickoff_started",
    "task_started",
    "agent_execution_started",
    "llm_call_started",
    "llm_stream_chunk",
    "llm_stream_chunk",
    "llm_call_completed",
    "tool_usage_started",
    "tool_usage_finished",
    "llm_call_started",
    "llm_stream_chunk",
    "llm_stream_chunk",
    "llm_call_completed",
    "agent_execution_completed",
    "task_completed",
    "crew_kickoff_completed",
]


async def test_a_crew_kickoff_is_published_in_order_as_one_correlated_run(node: Node) -> None:
    crew = research_crew()
    async with (
        Client(node.ws_url) as observer,
        AgentcastCrewListener(node.ws_url, tenant="acme", session="kick") as listener,
    ):
        sub = await observer.subscribe(listener.layout.pattern)
        result = await asyncio.to_thread(crew.kickoff)
        await listener.flush()
        count = listener.stats.published
        got = [await next_event(sub) for _ in range(count)]

    assert result.raw == "a widget is a small, well-defined thing"
    stats = listener.stats
    assert (stats.dropped, stats.failed, stats.mapping_errors) == (0, 0, 0)
    types = [e.payload["type"] for e in got]
    assert [t for t in types if not t.startswith(("flow_", "method_"))] == EXPECTED

    kickoff = got[0]
    assert {e.correlation_id for e in got} == {kickoff.headers["crewai_event_id"]}
    seen: set[str] = set()
    for envelope in got:
        if envelope.causation_id is not None:
            assert envelope.causation_id in seen, envelope.payload["type"]
        seen.add(envelope.headers["crewai_event_id"])
    sequences = [int(e.headers["crewai_emission_sequence"]) for e in got]
    assert sequences == sorted(sequences)

    by_type = {e.payload["type"]: e for e in got}
    assert by_type["tool_usage_finished"].payload["tool_name"] == "lookup"
    assert "widget means" in by_type["tool_usage_finished"].payload["output"]
    assert by_type["task_completed"].payload["output"] == result.raw
    assert by_type["agent_execution_started"].payload["agent"]["name"] == "researcher"
    chunks = [e.payload["chunk"] for e in got if e.payload["type"] == "llm_stream_chunk"]
    assert "".join(chunks[2:]).endswith("Final Answer: a widget is a small, well-defined thing")
    assert {e.topic for e in got} >= {
        "acme.kick.crewai.crew",
        "acme.kick.crewai.task",
        "acme.kick.crewai.agent",
        "acme.kick.crewai.tool",
        "acme.kick.crewai.llm",
    }
