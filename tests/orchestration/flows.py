"""Workflows the orchestration tests run (importable as ``tests.orchestration.flows:ALL``)."""

from __future__ import annotations

from typing import Any

from agentcast.orchestration import (
    CancelTimer,
    Command,
    Compensate,
    Complete,
    Discard,
    Expect,
    Fail,
    Publish,
    StartTimer,
    Step,
    Workflow,
)
from agentcast.protocol.envelope import Envelope

IN = "t.flow.in"
RESULTS = "t.flow.results"
OUT = "t.flow.out"
UNDO = "t.flow.undo"
AGENTS = "t.agents.work"


def kind(value: str) -> Any:
    return lambda event: event.headers.get("type") == value


counter = Workflow("counter", topics=[IN, RESULTS], reply_topic=RESULTS)


@counter.on(IN, start=True, when=kind("start"))
def start(state: Any, event: Envelope) -> Step:
    payload = event.payload or {}
    intents: list[Any] = [
        Command(AGENTS, "prepare", {"run": event.correlation_id}),
        Compensate("prepare", [Publish(UNDO, {"undo": "prepare"})]),
    ]
    if payload.get("expect"):
        intents.append(Expect("result", RESULTS, within=float(payload["expect"])))
    if payload.get("tick"):
        intents.append(StartTimer("tick", float(payload["tick"]), {"n": 1}))
    return Step({"n": 0, "seen": []}, intents)


@counter.on(IN, when=kind("add"))
def add(state: Any, event: Envelope) -> Step:
    state["n"] += int(event.payload["v"])
    state["seen"].append(event.payload["v"])
    return Step(state, [Publish(OUT, {"n": state["n"]}, {"key": event.correlation_id or ""})])


@counter.on(IN, when=kind("reserve"))
def reserve(state: Any, event: Envelope) -> Step:
    name = str(event.payload["name"])
    return Step(state, [Compensate(name, [Command(AGENTS, "release", {"name": name})])])


@counter.on(IN, when=kind("keep"))
def keep(state: Any, event: Envelope) -> Step:
    return Step(state, [Discard(str(event.payload["name"]))])


@counter.on(RESULTS)
def result(state: Any, event: Envelope) -> Step:
    if event.headers.get("status") == "error":
        return Step(state, [Fail(str(event.payload))])
    if event.headers.get("status") == "done":
        return Step(state, [Publish(OUT, {"done": state["n"]}), Complete()])
    return Step(state, [])


@counter.on_timer("tick")
def tick(state: Any, event: Envelope) -> Step:
    state["ticks"] = int(event.payload["n"])
    intents: list[Any] = [Publish(OUT, {"tick": event.payload["n"]})]
    if event.payload["n"] < 3:
        intents.append(StartTimer("tick", 0.05, {"n": event.payload["n"] + 1}))
    else:
        intents.append(CancelTimer("tick"))
    return Step(state, intents)


ALL = [counter]
