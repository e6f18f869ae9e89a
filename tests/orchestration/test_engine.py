"""The pure engine: transitions, parking, timers, expectations, compensation, determinism."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from agentcast.orchestration import Publish, Step, Workflow, WorkflowError
from agentcast.orchestration.engine import APPLY, IGNORE, PARK, Engine, format_micros
from agentcast.orchestration.instance import COMPLETED, FAILED, Instance
from agentcast.protocol.envelope import Envelope
from agentcast.storage.memory import rfc3339_micros
from tests.orchestration.flows import AGENTS, IN, OUT, RESULTS, UNDO, counter

_ids = itertools.count(1)
T0 = 1_790_000_000_000_000


def event(
    topic: str,
    kind: str | None = None,
    payload: Any = None,
    *,
    at: int = 0,
    run: str = "r1",
    status: str | None = None,
) -> Envelope:
    headers = {}
    if kind is not None:
        headers["type"] = kind
    if status is not None:
        headers["status"] = status
    n = next(_ids)
    return Envelope(
        id=f"e{n}", topic=topic, seq=n, epoch="x", time=format_micros(T0 + at), source="s",
        payload=payload, headers=headers, correlation_id=run,
    )  # fmt: skip


def apply(engine: Engine, instance: Instance | None, ev: Envelope) -> Instance:
    decision = engine.handle(counter, instance, ev)
    assert decision.kind == APPLY and decision.transition is not None
    return decision.transition.instance


def test_start_sends_command_with_reply_to_and_deterministic_ids() -> None:
    engine = Engine([counter])
    ev = event(IN, "start")
    first = engine.handle(counter, None, ev).transition
    second = engine.handle(counter, None, ev).transition
    assert first is not None and second is not None
    assert first.effects == second.effects and first.instance.state == second.instance.state
    (command,) = first.outgoing
    assert command.topic == AGENTS
    assert command.headers["command"] == "prepare"
    assert command.headers["reply_to"] == RESULTS
    assert command.key == "r1" and command.correlation_id == "r1"
    assert command.causation_id == ev.id
    other = engine.handle(counter, None, event(IN, "start")).transition
    assert other is not None and other.outgoing[0].headers["intent"] != command.headers["intent"]


def test_events_before_start_are_parked_and_unrelated_ones_ignored() -> None:
    engine = Engine([counter])
    assert engine.handle(counter, None, event(IN, "add", {"v": 1})).kind == PARK
    assert engine.handle(counter, None, event(IN, "other")).kind == IGNORE
    instance = apply(engine, None, event(IN, "start"))
    assert engine.handle(counter, instance, event(IN, "other")).kind == IGNORE


def test_state_threads_through_transitions_and_input_is_not_mutated() -> None:
    engine = Engine([counter])
    instance = apply(engine, None, event(IN, "start"))
    before = instance.state
    after = apply(engine, instance, event(IN, "add", {"v": 5}))
    assert instance.state == before
    assert orjson.loads(after.state) == {"n": 5, "seen": [5]} and after.step == 2


def test_expectation_met_by_a_matching_event() -> None:
    engine = Engine([counter])
    instance = apply(engine, None, event(IN, "start", {"expect": 1}))
    assert "result" in instance.expectations
    met = apply(engine, instance, event(RESULTS, at=500_000))
    assert met.expectations == {} and "expect:result" not in met.schedule()


def test_expired_expectation_fails_and_compensates_in_reverse_order() -> None:
    engine = Engine([counter])
    instance = apply(engine, None, event(IN, "start", {"expect": 1}))
    for name in ("a", "b", "c"):
        instance = apply(engine, instance, event(IN, "reserve", {"name": name}))
    instance = apply(engine, instance, event(IN, "keep", {"name": "b"}))
    wake = engine.wakeup(counter, instance, "expect:result")
    assert rfc3339_micros(wake.time) == T0 + 1_000_000
    decision = engine.handle(counter, instance, wake)
    assert decision.transition is not None
    failed = decision.transition.instance
    assert failed.status == FAILED and "result" in (failed.reason or "")
    sent = [(o.topic, o.payload, o.headers["compensation"]) for o in decision.transition.outgoing]
    assert sent == [
        (AGENTS, {"name": "c"}, "c"),
        (AGENTS, {"name": "a"}, "a"),
        (UNDO, {"undo": "prepare"}, "prepare"),
    ]
    assert failed.compensations == [] and failed.schedule() == {}
    # a failed instance ignores everything afterwards, so nothing is compensated twice
    assert engine.handle(counter, failed, event(RESULTS, status="error")).kind == IGNORE
    assert engine.handle(counter, failed, wake).kind == IGNORE


def test_a_moved_or_stale_wakeup_is_ignored() -> None:
    engine = Engine([counter])
    instance = apply(engine, None, event(IN, "start", {"tick": 1}))
    wake = engine.wakeup(counter, instance, "timer:tick")
    fired = apply(engine, instance, wake)
    assert orjson.loads(fired.state)["ticks"] == 1
    assert engine.handle(counter, fired, wake).kind == IGNORE  # the timer moved on


def test_failure_event_and_completion() -> None:
    engine = Engine([counter])
    instance = apply(engine, None, event(IN, "start"))
    done = engine.handle(counter, instance, event(RESULTS, status="done")).transition
    assert done is not None and done.instance.status == COMPLETED
    assert [o.topic for o in done.outgoing] == [OUT]
    failed = engine.handle(counter, instance, event(RESULTS, "x", "boom", status="error"))
    assert failed.transition is not None and failed.transition.instance.status == FAILED
    assert [o.topic for o in failed.transition.outgoing] == [UNDO]


def test_contract_violations_raise_workflow_error() -> None:
    bad = Workflow("bad", topics=[IN])

    @bad.on(IN, start=True, when=lambda e: e.headers.get("type") == "ret")
    def wrong_return(state: Any, event: Envelope) -> Any:
        return state

    @bad.on(IN, start=True, when=lambda e: e.headers.get("type") == "state")
    def bad_state(state: Any, event: Envelope) -> Step:
        return Step({"x": object()})

    @bad.on(IN, start=True, when=lambda e: e.headers.get("type") == "late")
    def late(state: Any, event: Envelope) -> Step:
        from agentcast.orchestration import Complete, StartTimer

        return Step(state, [Complete(), StartTimer("t", 1)])

    engine = Engine([bad])
    for kind in ("ret", "state", "late"):
        with pytest.raises(WorkflowError):
            engine.handle(bad, None, event(IN, kind))


def test_trigger_must_match_a_consumed_topic() -> None:
    wf = Workflow("w", topics=[IN])
    with pytest.raises(ValueError, match="matches none"):
        wf.on("t.other.*")
    assert Publish(OUT).headers == {}
