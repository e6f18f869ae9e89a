"""The durable record of one workflow instance and its canonical JSON form.

Everything an instance is (state, status, step count, running timers and expectations, the
compensation stack) lives in this record; the store keeps it as two JSON documents (the
state, and the rest as ``meta``) and derives its timer rows from :meth:`Instance.schedule`.
Canonical JSON (sorted keys, no whitespace) makes two equal records equal byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

JSON = Any

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"

TIMER = "timer:"
EXPECT = "expect:"


def canonical(value: JSON) -> bytes:
    """The canonical JSON of ``value`` (sorted keys); raises ``TypeError`` if it is not JSON."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"not JSON-serialisable: {exc}") from None


@dataclass(slots=True)
class Instance:
    """One workflow instance.

    ``timers`` maps a timer name to ``[due_us, payload]``; ``expectations`` maps a name to
    ``[pattern, due_us]``; ``compensations`` is the stack of ``[name, [action, ...]]`` in
    registration order (actions in :func:`~agentcast.orchestration.intents.intent_to_json`
    form). ``step`` counts the transitions applied so far; ``reason`` is why a failed
    instance failed.
    """

    workflow: str
    key: str
    state: bytes
    status: str = RUNNING
    step: int = 0
    timers: dict[str, list[JSON]] = field(default_factory=dict)
    expectations: dict[str, list[JSON]] = field(default_factory=dict)
    compensations: list[list[JSON]] = field(default_factory=list)
    reason: str | None = None

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def meta(self) -> bytes:
        """Everything but the state, as canonical JSON."""
        return canonical(
            {
                "status": self.status,
                "step": self.step,
                "timers": self.timers,
                "expectations": self.expectations,
                "compensations": self.compensations,
                "reason": self.reason,
            }
        )

    @classmethod
    def load(cls, workflow: str, key: str, state: bytes, meta: bytes | str) -> Instance:
        """Rebuild an instance from the store's two documents."""
        data = orjson.loads(meta)
        return cls(
            workflow,
            key,
            bytes(state),
            data["status"],
            int(data["step"]),
            dict(data["timers"]),
            dict(data["expectations"]),
            list(data["compensations"]),
            data.get("reason"),
        )

    def copy(self) -> Instance:
        """A copy that can be changed without touching this one."""
        return Instance.load(self.workflow, self.key, self.state, self.meta())

    def schedule(self) -> dict[str, int]:
        """The instance's pending wake-ups: ``timer:<name>`` and ``expect:<name>`` to due
        microseconds (empty once the instance ended)."""
        if not self.running:
            return {}
        wakeups = {TIMER + name: int(entry[0]) for name, entry in self.timers.items()}
        wakeups.update({EXPECT + name: int(entry[1]) for name, entry in self.expectations.items()})
        return wakeups
