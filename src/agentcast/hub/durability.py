"""Which topics are durable, and how each durable topic keeps and recovers history.

Rules are topic patterns in config order; the first rule whose pattern matches a topic
applies. A topic no rule matches is ephemeral (at-most-once, no history).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agentcast.protocol.topics import matches

MAX_CACHED = 65536


class GapPolicy(StrEnum):
    """What a resuming subscriber gets when its position cannot be recovered (older than
    retention, or from another epoch)."""

    FROM_NOW = "from_now"
    SNAPSHOT = "snapshot"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class DurableRule:
    """Retention and recovery settings of the durable topics ``pattern`` matches."""

    pattern: str
    max_events: int = 10_000
    max_age: float | None = None
    on_gap: GapPolicy = GapPolicy.FROM_NOW
    snapshot_key: str = "key"


class DurabilityRules:
    """Maps a topic to its :class:`DurableRule`, or ``None`` for ephemeral topics."""

    def __init__(self, rules: tuple[DurableRule, ...] = ()) -> None:
        self.rules = rules
        self._cache: dict[str, DurableRule | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, topic: str) -> DurableRule | None:
        """The first rule matching exact ``topic``."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = next((r for r in self.rules if matches(r.pattern, topic)), None)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[topic] = found
        return found
