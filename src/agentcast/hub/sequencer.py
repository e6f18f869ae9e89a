"""Per-topic stream positions and the node's Lamport clock, in memory (ephemeral topics).

Each topic gets an epoch when the node first sees it and ``seq`` 1, 2, 3... after that.
At most ``max_topics`` topics are remembered; the least recently published one is forgotten
past that, and if it is published again it starts a new epoch at ``seq`` 1, which is exactly
what an epoch change tells a client: the earlier history is gone.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict


def new_epoch() -> str:
    """A short random epoch identifier."""
    return secrets.token_hex(4)


class MemorySequencer:
    """Assigns ``(epoch, seq)`` per topic. Not thread-safe."""

    def __init__(self, max_topics: int = 100_000) -> None:
        self.max_topics = max_topics
        self._streams: OrderedDict[str, list[object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def next(self, topic: str) -> tuple[str, int]:
        """Advance ``topic``'s stream and return its new ``(epoch, seq)``."""
        stream = self._streams.get(topic)
        if stream is None:
            if len(self._streams) >= self.max_topics:
                self._streams.popitem(last=False)
            stream = self._streams[topic] = [new_epoch(), 0]
        else:
            self._streams.move_to_end(topic)
        seq = stream[1] + 1  # type: ignore[operator]
        stream[1] = seq
        return stream[0], seq  # type: ignore[return-value]

    def position(self, topic: str) -> tuple[str, int] | None:
        """The last assigned ``(epoch, seq)`` of ``topic``, or ``None`` if unknown."""
        stream = self._streams.get(topic)
        return None if stream is None else (stream[0], stream[1])  # type: ignore[return-value]


class LamportClock:
    """A node's Lamport clock: every event gets ``max(local, received) + 1``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def tick(self, received: int = 0) -> int:
        self.value = max(self.value, received) + 1
        return self.value
