"""Property tests: any sequence of inputs replays to the same transitions byte for byte,
and compensations run at most once each, in reverse order of registration."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentcast.orchestration.engine import APPLY, Engine, format_micros
from agentcast.orchestration.instance import Instance
from agentcast.orchestration.replay import replay
from agentcast.orchestration.store import LogEntry
from agentcast.protocol.envelope import Envelope
from tests.orchestration.flows import IN, RESULTS, counter

T0 = 1_790_000_000_000_000

inputs = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.sampled_from([{}, {"expect": 1}, {"tick": 0.5}])),
        st.tuples(st.just("add"), st.fixed_dictionaries({"v": st.integers(-5, 5)})),
        st.tuples(st.just("reserve"), st.fixed_dictionaries({"name": st.sampled_from("abc")})),
        st.tuples(st.just("keep"), st.fixed_dictionaries({"name": st.sampled_from("abc")})),
        st.tuples(st.just("result"), st.sampled_from(["ok", "error", "done"])),
        st.tuples(st.just("wake"), st.sampled_from(["timer:tick", "expect:result"])),
    ),
    max_size=25,
)


def run(steps: list[tuple[str, Any]]) -> tuple[list[LogEntry], list[list[str]]]:
    """Apply ``steps`` to instance ``k``; the log, and each transition's compensations."""
    engine = Engine([counter])
    instance: Instance | None = None
    log: list[LogEntry] = []
    compensations: list[list[str]] = []
    for n, (kind, arg) in enumerate(steps, start=1):
        at = format_micros(T0 + n * 100_000)
        if kind == "wake":
            if instance is None or arg not in instance.schedule():
                continue
            event = engine.wakeup(counter, instance, arg)
        elif kind == "result":
            event = Envelope(f"e{n}", RESULTS, n, "x", at, "s", None, {"status": arg}, "k")
        else:
            event = Envelope(f"e{n}", IN, n, "x", at, "s", arg, {"type": kind}, "k")
        decision = engine.handle(counter, instance, event)
        if decision.kind != APPLY or decision.transition is None:
            continue
        transition = decision.transition
        instance = transition.instance
        log.append(LogEntry(instance.step, transition.input, transition.effects, instance.state))
        compensations.append(
            [o.headers["compensation"] for o in transition.outgoing if "compensation" in o.headers]
        )
    return log, compensations


@given(inputs)
def test_replaying_any_log_is_identical(steps: list[tuple[str, Any]]) -> None:
    log, _ = run(steps)
    assert run(steps)[0] == log
    report = replay(counter, "k", log)
    assert report.identical and report.steps == len(log)


@given(inputs)
def test_compensations_run_once_in_reverse_registration_order(
    steps: list[tuple[str, Any]],
) -> None:
    _, compensations = run(steps)
    ran = [names for names in compensations if names]
    assert len(ran) <= 1  # one failure at most: a failed instance ignores the rest
    if ran:
        names = ran[0]
        assert len(names) == len(set(names))
        assert names[-1] == "prepare"  # registered first, undone last
