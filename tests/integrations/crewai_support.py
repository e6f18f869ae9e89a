"""Offline CrewAI parts for the tests: a scripted LLM, a tool, and a small crew."""

from __future__ import annotations

import asyncio
from typing import Any

from crewai import Agent, Crew, Task
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from crewai.tools import tool

from agentcast.client import Envelope, Subscription


class ScriptedLLM(BaseLLM):
    """An LLM that answers with the next of ``replies``, streamed in two chunks, and emits
    the call's started, chunk and completed events like a provider does. No network."""

    replies: list[str] = []

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages,
                tools=tools,
                callbacks=callbacks,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            text = self.replies.pop(0)
            middle = len(text) // 2
            for part in (text[:middle], text[middle:]):
                self._emit_stream_chunk_event(
                    chunk=part, from_task=from_task, from_agent=from_agent
                )
            self._emit_call_completed_event(
                response=text,
                call_type=LLMCallType.LLM_CALL,
                from_task=from_task,
                from_agent=from_agent,
                messages=messages,
            )
        return text

    def supports_function_calling(self) -> bool:
        return False


@tool("lookup")
def lookup(term: str) -> str:
    """Look a term up in the glossary."""
    return f"{term} means a small, well-defined thing"


def research_crew() -> Crew:
    """One agent with the ``lookup`` tool and one task: the LLM first calls the tool, then
    gives its final answer."""
    llm = ScriptedLLM(
        model="scripted",
        replies=[
            'Thought: I should look it up\nAction: lookup\nAction Input: {"term": "widget"}',
            "Thought: I know it now\nFinal Answer: a widget is a small, well-defined thing",
        ],
    )
    researcher = Agent(
        role="researcher",
        goal="define terms",
        backstory="keeps a glossary",
        llm=llm,
        tools=[lookup],
        verbose=False,
    )
    task = Task(
        description="Define the term widget",
        expected_output="one sentence",
        agent=researcher,
        name="define",
    )
    return Crew(agents=[researcher], tasks=[task], verbose=False)


async def next_event(sub: Subscription) -> Envelope:
    async with asyncio.timeout(20):
        return await sub.get()


def crew_run_events() -> list[tuple[Any, Any]]:
    """The ``(source, event)`` pairs of one crew run, built from real CrewAI objects and
    event classes, in emission order: crew > task > agent > (tool, LLM call with two
    stream chunks) and their completions."""
    from datetime import UTC, datetime

    from crewai.crews.crew_output import CrewOutput
    from crewai.events import (
        AgentExecutionCompletedEvent,
        AgentExecutionStartedEvent,
        CrewKickoffCompletedEvent,
        CrewKickoffStartedEvent,
        LLMCallCompletedEvent,
        LLMCallStartedEvent,
        LLMStreamChunkEvent,
        TaskCompletedEvent,
        TaskStartedEvent,
        ToolUsageFinishedEvent,
        ToolUsageStartedEvent,
    )
    from crewai.tasks.task_output import TaskOutput

    crew = research_crew()
    task = crew.tasks[0]
    agent = crew.agents[0]
    llm = agent.llm
    now = datetime.now(UTC)
    tool_args = {"term": "widget"}
    answer = "a widget is a small, well-defined thing"
    task_output = TaskOutput(description="Define it", agent="researcher", raw=answer)
    return [
        (crew, CrewKickoffStartedEvent(crew_name="research", crew=crew, inputs=tool_args)),
        (task, TaskStartedEvent(context=None, task=task)),
        (agent, AgentExecutionStartedEvent(agent=agent, task=task, tools=[], task_prompt="?")),
        (agent, ToolUsageStartedEvent(tool_name="lookup", tool_args=tool_args, agent=agent)),
        (
            agent,
            ToolUsageFinishedEvent(
                tool_name="lookup",
                tool_args=tool_args,
                agent=agent,
                started_at=now,
                finished_at=now,
                output="widget means a small, well-defined thing",
            ),
        ),
        (llm, LLMCallStartedEvent(call_id="call-1", model="scripted", messages="Define it")),
        (llm, LLMStreamChunkEvent(chunk="a widget is ", call_id="call-1")),
        (llm, LLMStreamChunkEvent(chunk="a small, well-defined thing", call_id="call-1")),
        (llm, LLMCallCompletedEvent(call_id="call-1", response=answer, call_type="llm_call")),
        (agent, AgentExecutionCompletedEvent(agent=agent, task=task, output=answer)),
        (task, TaskCompletedEvent(output=task_output, task=task)),
        (
            crew,
            CrewKickoffCompletedEvent(
                crew_name="research",
                crew=crew,
                output=CrewOutput(raw=answer, tasks_output=[task_output]),
            ),
        ),
    ]
