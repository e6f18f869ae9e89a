"""Replay: run an instance's recorded inputs through the workflow again and compare.

The engine is deterministic, so replaying the log with the same workflow code must give,
step for step, the same effects (intents, outgoing messages with their ids, the instance's
meta) and the same state, byte for byte. A difference means a handler is not pure (it read
a clock, a random number, a global) or the code changed since the instance ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from agentcast.orchestration.engine import APPLY, Engine
from agentcast.orchestration.instance import Instance
from agentcast.orchestration.store import LogEntry
from agentcast.orchestration.workflow import Workflow
from agentcast.protocol.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Difference:
    """Step ``step`` replayed to something else: ``part`` is ``effects``, ``state`` or
    ``decision`` (the replay did not apply the input at all)."""

    step: int
    part: str
    recorded: bytes
    replayed: bytes


@dataclass(slots=True)
class ReplayReport:
    """The outcome of a replay: ``steps`` replayed, and every difference found."""

    workflow: str
    key: str
    steps: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, object]:
        return {
            "workflow": self.workflow,
            "instance": self.key,
            "steps": self.steps,
            "identical": self.identical,
            "differences": [
                {
                    "step": d.step,
                    "part": d.part,
                    "recorded": d.recorded.decode(),
                    "replayed": d.replayed.decode(),
                }
                for d in self.differences
            ],
        }


def replay(workflow: Workflow, key: str, entries: Sequence[LogEntry]) -> ReplayReport:
    """Replay ``entries`` (an instance's log, in step order) from a new instance."""
    engine = Engine([workflow])
    report = ReplayReport(workflow.name, key)
    instance: Instance | None = None
    for entry in entries:
        event = Envelope.from_dict(orjson.loads(entry.input))
        decision = engine.handle(workflow, instance, event)
        report.steps += 1
        transition = decision.transition
        if decision.kind != APPLY or transition is None:
            report.differences.append(
                Difference(entry.step, "decision", b"apply", decision.kind.encode())
            )
            break
        if transition.effects != entry.effects:
            report.differences.append(
                Difference(entry.step, "effects", entry.effects, transition.effects)
            )
        if transition.instance.state != entry.state:
            report.differences.append(
                Difference(entry.step, "state", entry.state, transition.instance.state)
            )
        instance = transition.instance
    return report
