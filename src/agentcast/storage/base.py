"""The ``HistoryStore`` contract: where durable topics keep their events and positions.

The store, not the hub, is the source of order: it assigns each appended event its
``seq`` (gapless per topic within an epoch, starting at 1) under the same atomic commit that
makes the event durable, so every node appending through the same store agrees on one
order per topic.

Epochs: each topic's history has an ``epoch`` string chosen by the store when it first
sees the topic. The epoch changes only when the topic's history is lost or reset (a memory
store restarts, an operator resets a topic); ``seq`` then starts again at 1. Trimming old
events by retention does not change the epoch: positions stay meaningful, and a reader
asking for events older than :meth:`HistoryStore.first_seq` learns they are gone.

Idempotency: a draft with an ``idempotency_key`` that the store already holds *for the same
topic* (appended within ``dedupe_window`` seconds) is not appended again; the original event
is returned with ``duplicate=True`` (if the original was trimmed meanwhile, its epoch and
seq with the duplicate draft's content). Keys are opaque to the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agentcast.protocol.envelope import encode_envelope

# The event records below are built once or twice per durable publish, so they are plain
# (not frozen) slotted dataclasses: a frozen one costs several times more to construct. Treat
# them as immutable all the same: once built, nobody assigns their fields.


@dataclass(slots=True)
class EventDraft:
    """An event before the store gives it a position. ``payload`` is encoded JSON.

    Not to be changed once submitted (see the note above)."""

    id: str
    topic: str
    time: str
    source: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    lamport: int = 0
    idempotency_key: str | None = None


@dataclass(slots=True)
class StoredEvent:
    """A durable event with its position. Not to be changed once built (see the note above);
    stores may hand the same object to several readers."""

    id: str
    topic: str
    epoch: str
    seq: int
    time: str
    source: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    lamport: int = 0

    @classmethod
    def from_draft(cls, draft: EventDraft, epoch: str, seq: int) -> StoredEvent:
        return cls(
            draft.id,
            draft.topic,
            epoch,
            seq,
            draft.time,
            draft.source,
            draft.payload,
            draft.headers,
            draft.correlation_id,
            draft.causation_id,
            draft.lamport,
        )

    def envelope_json(self) -> bytes:
        """The envelope of protocol v1, encoded."""
        return encode_envelope(
            self.id,
            self.topic,
            self.seq,
            self.epoch,
            self.time,
            self.source,
            self.correlation_id,
            self.causation_id,
            self.lamport,
            self.headers,
            self.payload,
        )


@dataclass(slots=True)
class AppendResult:
    """The stored event for one draft; ``duplicate`` if its idempotency key matched. Not to be
    changed once built (see the note above)."""

    event: StoredEvent
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class TopicPosition:
    """A topic's epoch, its last assigned seq, and the oldest seq still retained
    (``first_seq`` is ``last_seq + 1`` when nothing is retained)."""

    epoch: str
    last_seq: int
    first_seq: int


class HistoryStore(Protocol):
    """Durable, ordered per-topic history. Implementations: memory, SQLite, PostgreSQL, Redis,
    NATS JetStream.

    All methods are coroutines and may be called concurrently from one event loop; each
    :meth:`append` call is atomic (all drafts stored or none) and is durable when it returns
    (per the store's documented fsync policy). Appends to the same topic are applied in
    call order, drafts within a call in list order.
    """

    async def open(self) -> None:
        """Connect and create the schema if needed. Called once before anything else."""

    async def close(self) -> None:
        """Release connections; pending appends finish first."""

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        """Store ``drafts`` in one atomic commit and return one result per draft, in order.

        Raises ``ValueError`` (storing nothing) if a draft's ``time`` is not RFC 3339."""

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events of ``topic`` with ``seq > after_seq``, ascending."""

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        """The last ``count`` retained events of ``topic``, ascending."""

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events of ``topic`` with ``time >= time`` (RFC 3339), ascending."""

    async def position(self, topic: str) -> TopicPosition | None:
        """The topic's position, or ``None`` if the store has never seen it."""

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        """Delete events beyond the newest ``keep_last`` and, if ``older_than`` (RFC 3339)
        is given, the oldest run of events older than it (so the retained seqs stay one
        gap-free range even if event times are out of order); return how many were deleted.
        Never changes the epoch or ``last_seq``."""

    async def topics(self) -> list[str]:
        """Every topic the store holds a position for."""

    async def reset(self, topic: str) -> str:
        """Forget ``topic``'s history and give it a new epoch (returned); an unknown topic is
        created with a new epoch and ``last_seq`` 0."""
