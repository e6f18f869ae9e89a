"""The ``ConsumerStore`` contract: where consumer groups keep their progress.

A group's progress is its ack floor (every ``seq`` at or below it is done) and the done
positions above the floor. :meth:`ConsumerStore.save` replaces both atomically; after a
restart :meth:`ConsumerStore.load` returns the last saved state, so a group redelivers at
most what was in flight or acked after its last save (at-least-once, never a loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """What a group has finished on a topic, within one epoch of that topic."""

    epoch: str
    floor: int
    done: frozenset[int] = frozenset()


class ConsumerStore(Protocol):
    """Durable group progress. Implementations: memory, SQLite, PostgreSQL, Redis, NATS."""

    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Release connections."""

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        """The last saved progress, or ``None`` for a group never saved."""

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        """Replace the group's progress atomically; durable when it returns."""


class MemoryConsumerStore:
    """Progress kept in a dict (lost on restart, like the memory history store)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], GroupProgress] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        return self._groups.get((topic, group))

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        self._groups[(topic, group)] = progress
