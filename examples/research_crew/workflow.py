"""The research workflow: search, draft, review; undo the finished steps on failure.

Every step is a command to an agent group with an expectation: if the agent's result does
not arrive in time, or arrives as an error, the workflow fails and the compensations of
the steps done so far run in reverse order (delete the draft, then discard the notes).
"""

from __future__ import annotations

from typing import Any

from agentcast.orchestration import (
    Command,
    Compensate,
    Complete,
    Expect,
    Fail,
    Publish,
    Step,
    Workflow,
)
from agentcast.protocol.envelope import Envelope

REQUESTS = "acme.research.requests"
RESULTS = "acme.research.results"
REPORTS = "acme.research.reports"
RESEARCHER = "acme.agents.researcher"
WRITER = "acme.agents.writer"
REVIEWER = "acme.agents.reviewer"
STEP_TIMEOUT = 10.0

research = Workflow("research", topics=[REQUESTS, RESULTS], reply_topic=RESULTS)


def result_of(command: str) -> Any:
    return lambda event: event.headers.get("command") == command


@research.on(REQUESTS, start=True)
def requested(state: Any, event: Envelope) -> Step:
    question = event.payload["question"]
    return Step(
        {"question": question, "stage": "searching"},
        [
            Command(RESEARCHER, "search", {"question": question}),
            Compensate("notes", [Command(RESEARCHER, "discard_notes", {"question": question})]),
            Expect("search", RESULTS, within=STEP_TIMEOUT),
        ],
    )


@research.on(RESULTS, when=lambda e: e.headers.get("status") == "error")
def failed(state: Any, event: Envelope) -> Step:
    command = event.headers.get("command", "?")
    return Step({**state, "stage": "failed"}, [Fail(f"{command}: {event.payload['error']}")])


@research.on(RESULTS, when=result_of("search"))
def searched(state: Any, event: Envelope) -> Step:
    if event.headers.get("status") != "ok":
        return Step(state)
    sources = event.payload["sources"]
    return Step(
        {**state, "stage": "drafting", "sources": sources},
        [
            Command(WRITER, "draft", {"question": state["question"], "sources": sources}),
            Compensate("draft", [Command(WRITER, "delete_draft", {"question": state["question"]})]),
            Expect("draft", RESULTS, within=STEP_TIMEOUT),
        ],
    )


@research.on(RESULTS, when=result_of("draft"))
def drafted(state: Any, event: Envelope) -> Step:
    if event.headers.get("status") != "ok":
        return Step(state)
    return Step(
        {**state, "stage": "reviewing", "draft": event.payload["draft"]},
        [
            Command(REVIEWER, "review", {"draft": event.payload["draft"]}),
            Expect("review", RESULTS, within=STEP_TIMEOUT),
        ],
    )


@research.on(RESULTS, when=result_of("review"))
def reviewed(state: Any, event: Envelope) -> Step:
    if event.headers.get("status") != "ok":
        return Step(state)
    report = {"question": state["question"], "report": state["draft"], **event.payload}
    return Step({**state, "stage": "done"}, [Publish(REPORTS, report), Complete()])


WORKFLOWS = [research]
