"""Per-topic publication counters for the dashboard, fed by the hub's observer hook.

:class:`TopicTraffic` is the :attr:`Hub.observer <agentcast.hub.hub.Hub.observer>`: one call
per publication, O(1), no parsing of the envelope. It keeps at most ``max_topics`` topics
(the least recently published one is forgotten first) and, per topic, a ring of per-second
counts over the last ``span`` seconds, so a rate is the count in that window divided by the
time the window covers (less for a topic first seen inside it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_TOPICS = 1024
DEFAULT_SPAN = 10


@dataclass(slots=True, frozen=True)
class TopicRate:
    """One topic's publications: ``rate`` per second over the window, ``total`` since it was
    first seen (or last forgotten)."""

    topic: str
    rate: float
    total: int


class TopicCounter:
    """Publications of one topic: a total and per-second counts of the last ``span`` seconds."""

    __slots__ = ("first_seen", "last_second", "slots", "total")

    def __init__(self, span: int, now: float) -> None:
        self.slots = [0] * span
        self.last_second = int(now)
        self.first_seen = now
        self.total = 0

    def add(self, now: float) -> None:
        second = int(now)
        slots = self.slots
        span = len(slots)
        if second != self.last_second:
            gap = second - self.last_second
            if gap >= span or gap < 0:
                slots[:] = [0] * span
            else:
                for past in range(self.last_second + 1, second + 1):
                    slots[past % span] = 0
            self.last_second = second
        slots[second % span] += 1
        self.total += 1

    def rate(self, now: float) -> float:
        """Publications per second over the window ending at ``now``."""
        span = len(self.slots)
        second = int(now)
        lo = second - span + 1  # the slots of seconds lo..second form the window
        hi = min(second, self.last_second)  # nothing was counted after last_second
        count = sum(self.slots[s % span] for s in range(lo, hi + 1)) if hi >= lo else 0
        covered = min(now - lo, now - self.first_seen)
        return count / max(covered, 1.0)


class TopicTraffic:
    """Bounded per-topic publication counters; call the instance once per publication."""

    def __init__(
        self,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        span: int = DEFAULT_SPAN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_topics < 1 or span < 1:
            raise ValueError("max_topics and span must be at least 1")
        self.max_topics = max_topics
        self.span = span
        self.clock = clock
        self.forgotten = 0
        self._topics: OrderedDict[str, TopicCounter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    def __call__(self, topic: str, envelope: bytes) -> None:
        """Count one publication of ``topic`` (the envelope is not read)."""
        now = self.clock()
        topics = self._topics
        counter = topics.get(topic)
        if counter is None:
            if len(topics) >= self.max_topics:
                topics.popitem(last=False)
                self.forgotten += 1
            counter = topics[topic] = TopicCounter(self.span, now)
        else:
            topics.move_to_end(topic)
        counter.add(now)

    def topics(self) -> list[str]:
        """The topics counted, least recently published first."""
        return list(self._topics)

    def rates(self, now: float | None = None) -> list[TopicRate]:
        """Every counted topic's rate and total, highest rate first (then by name)."""
        at = self.clock() if now is None else now
        rows = [
            TopicRate(topic, counter.rate(at), counter.total)
            for topic, counter in self._topics.items()
        ]
        rows.sort(key=lambda row: (-row.rate, row.topic))
        return rows
