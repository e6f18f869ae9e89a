"""A connection's bounded outbound queue and its slow-consumer policies (sans-I/O).

The queue holds complete WebSocket frames waiting for the connection's writer. It is bounded
in messages and in bytes. Replies are *control* entries: never dropped, never collapsed, and
counted against the bounds so a flood of commands cannot grow it without limit (the
transport stops reading from a client whose writes are paused). Events carry the policy of
the subscription that matched them; when an event does not fit, that policy decides:

* ``disconnect``: the queue reports overflow; the owner closes the connection (code 4001).
* ``drop_newest``: the new event is dropped.
* ``drop_oldest``: the oldest queued events are dropped until it fits.
* ``latest_per_key``: a queued event with the same key is replaced (collapse); without one,
  the oldest events are dropped as with ``drop_oldest``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from agentcast.protocol.commands import Policy


class PushOutcome(Enum):
    QUEUED = "queued"
    DROPPED = "dropped"
    OVERFLOW = "overflow"


@dataclass(slots=True, frozen=True)
class Entry:
    """One queued frame; ``policy`` is ``None`` for control frames (replies).

    Immutable, so the hub builds one entry per publication and policy and shares it among
    every subscriber's queue.
    """

    frame: bytes
    policy: Policy | None
    key: str | None
    published_at: float


class OutboundQueue:
    """Bounded FIFO of frames with per-entry drop policies. Not thread-safe."""

    __slots__ = ("_entries", "bytes", "dropped", "max_bytes", "max_messages")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._entries: deque[Entry] = deque()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push_control(self, entry: Entry) -> None:
        """Queue a reply; control frames are never dropped by a policy."""
        self._entries.append(entry)
        self.bytes += len(entry.frame)

    def push_replay(self, entry: Entry) -> None:
        """Queue a replayed history event past the bounds. The replayer paces itself (it
        waits for the queue to drain between pages), so this overshoots by one page at most;
        a drop here would be a gap in a recovery that promised none."""
        self._entries.append(entry)
        self.bytes += len(entry.frame)

    def push(self, entry: Entry) -> PushOutcome:
        """Queue an event entry, applying its policy if it does not fit.

        Returns ``DROPPED`` if this or an older event was dropped to make room (the number
        dropped is added to ``dropped``), ``OVERFLOW`` if the policy is ``disconnect`` and the
        event did not fit (nothing is queued), else ``QUEUED``.
        """
        size = len(entry.frame)
        policy = entry.policy
        if self._fits(size):
            self._entries.append(entry)
            self.bytes += size
            return PushOutcome.QUEUED
        if policy is Policy.DISCONNECT:
            return PushOutcome.OVERFLOW
        if policy is Policy.DROP_NEWEST or size > self.max_bytes:
            self.dropped += 1
            return PushOutcome.DROPPED
        before = self.dropped
        if policy is Policy.LATEST_PER_KEY and entry.key is not None:
            self._remove_same_key(entry.key)
        while not self._fits(size) and self._drop_oldest_event():
            pass
        if not self._fits(size):
            # Only control frames are left; they are never dropped.
            self.dropped += 1
            return PushOutcome.DROPPED
        self._entries.append(entry)
        self.bytes += size
        return PushOutcome.DROPPED if self.dropped > before else PushOutcome.QUEUED

    def take_all(self) -> list[Entry]:
        """Remove and return every queued entry, oldest first."""
        entries = list(self._entries)
        self._entries.clear()
        self.bytes = 0
        return entries

    def clear(self) -> None:
        """Forget every queued entry (used when the connection closes)."""
        self._entries.clear()
        self.bytes = 0

    def _fits(self, size: int) -> bool:
        return len(self._entries) < self.max_messages and self.bytes + size <= self.max_bytes

    def _remove_same_key(self, key: str) -> None:
        for index, entry in enumerate(self._entries):
            if entry.key == key and entry.policy is Policy.LATEST_PER_KEY:
                del self._entries[index]
                self.bytes -= len(entry.frame)
                self.dropped += 1
                return

    def _drop_oldest_event(self) -> bool:
        for index, entry in enumerate(self._entries):
            if entry.policy is not None:
                del self._entries[index]
                self.bytes -= len(entry.frame)
                self.dropped += 1
                return True
        return False
