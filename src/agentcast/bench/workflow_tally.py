"""Counting the intents the benchmark's workflow publishes (sans-I/O, no clock).

The load feeds every intent it receives to :meth:`IntentTally.add` with its arrival time;
the tally keeps, per phase (the prefix of the instance key before ``-``), the distinct
``(key, n)`` pairs (a transition is counted once however often its intent arrives), the
arrival of the last new one, the latencies ``arrival - t`` of new intents, and the
intents that arrived out of per-instance order (``n`` not one more than the previous
``n`` of that key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PhaseTally:
    """The intents of one phase."""

    expected: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    last_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    seen: set[tuple[str, int]] = field(default_factory=set)
    last_n: dict[str, int] = field(default_factory=dict)

    @property
    def transitions(self) -> int:
        """Distinct transitions whose intent arrived."""
        return len(self.seen)

    @property
    def done(self) -> bool:
        return self.expected > 0 and self.transitions >= self.expected


def phase_of(key: str) -> str:
    """The phase of an instance key: its text before the first ``-``."""
    return key.split("-", 1)[0]


class IntentTally:
    """Intents by phase; ``on_done(phase)`` is called once a phase has all it expects."""

    def __init__(self, on_done: Callable[[str], None] | None = None) -> None:
        self.phases: dict[str, PhaseTally] = {}
        self.malformed = 0
        self._on_done = on_done

    def phase(self, name: str) -> PhaseTally:
        """The tally of ``name`` (created empty)."""
        return self.phases.setdefault(name, PhaseTally())

    def expect(self, name: str, count: int) -> None:
        """Say how many transitions phase ``name`` should produce."""
        tally = self.phase(name)
        tally.expected = count
        if tally.done and self._on_done is not None:
            self._on_done(name)

    def add(self, payload: Any, arrival_ns: int) -> None:
        """Count one received intent whose payload is ``{"k", "n", "t"}``."""
        if not isinstance(payload, dict):
            self.malformed += 1
            return
        key, n, sent_ns = payload.get("k"), payload.get("n"), payload.get("t")
        if not isinstance(key, str) or not isinstance(n, int) or isinstance(n, bool):
            self.malformed += 1
            return
        tally = self.phase(phase_of(key))
        tally.received += 1
        if (key, n) in tally.seen:
            tally.duplicates += 1
            return
        was_done = tally.done
        tally.seen.add((key, n))
        tally.last_ns = arrival_ns
        if n != tally.last_n.get(key, 0) + 1:
            tally.out_of_order += 1
        tally.last_n[key] = max(n, tally.last_n.get(key, 0))
        if isinstance(sent_ns, int) and not isinstance(sent_ns, bool):
            tally.latencies_ns.append(arrival_ns - sent_ns)
        if tally.done and not was_done and self._on_done is not None:
            self._on_done(phase_of(key))

    def complete_per_instance(self, name: str, counts: dict[str, int]) -> bool:
        """Whether every instance ``key`` of phase ``name`` produced exactly the intents
        ``n = 1..counts[key]`` and no other instance of the phase produced any."""
        tally = self.phase(name)
        wanted = {(key, n) for key, count in counts.items() for n in range(1, count + 1)}
        return tally.seen == wanted
