"""The workflow the workflow benchmark runs (``agentcast.bench.workflow_flows:ALL``).

``bench_counter`` consumes :data:`EVENTS`; each event's ``correlation_id`` is an instance.
Every event is one transition: the instance's count ``n`` grows by one and the transition
publishes one intent to :data:`INTENTS` carrying the instance key, the new ``n`` and the
event's ``t`` (the load's send timestamp, copied from the payload: the handler stays a pure
function of its input). So the intents say which events became transitions, exactly once
each (``(key, n)`` pairs are 1..count per instance), and how long each took.
"""

from __future__ import annotations

from typing import Any

from agentcast.orchestration import Publish, Step, Workflow
from agentcast.protocol.envelope import Envelope

EVENTS = "bench.wf.events"
INTENTS = "bench.wf.intents"

counter = Workflow("bench_counter", topics=[EVENTS], initial={"n": 0})


@counter.on(EVENTS, start=True)
def count(state: Any, event: Envelope) -> Step:
    """One more event for this instance: ``n + 1`` and one intent."""
    n = int(state["n"]) + 1
    payload = event.payload if isinstance(event.payload, dict) else {}
    intent = {"k": event.correlation_id, "n": n, "t": payload.get("t")}
    return Step({"n": n}, [Publish(INTENTS, intent)])


ALL = [counter]
