"""What a relay needs from the database holding an outbox: the ``OutboxStore`` protocol.

Contract of every implementation:

- Partition leases: :meth:`OutboxStore.balance` records the relay as alive, renews the
  partitions it holds, releases the ones above its fair share (``ceil(partitions / live
  relays)``) and takes free or expired ones up to it. A partition has at most one owner with
  an unexpired lease; the relay only calls :meth:`balance` while nothing is in flight.
- Claims: :meth:`OutboxStore.claim` returns unpublished rows of the partitions the relay
  holds, in id order, in one short transaction that sets ``claimed_by`` and ``lease_until``
  (the partition's lease end). Within a partition it stops at the first row leased by
  another relay, so a later row is never handed out ahead of an earlier one.
- :meth:`OutboxStore.renew` keeps leases alive while a claimed batch is being published.
- :meth:`OutboxStore.mark_published` marks rows only while the relay still holds both the
  row and the partition lease; it returns the ids it marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One claimed outbox row, ready to publish. ``created_at`` is in Unix seconds."""

    id: int
    partition: int
    topic: str
    key: str | None
    payload: Any
    headers: dict[str, str] | None
    correlation_id: str | None
    causation_id: str | None
    created_at: float


class OutboxStore(Protocol):
    """The database side of a relay (PostgreSQL or SQLite)."""

    partitions: int

    async def open(self) -> None:
        """Connect and read the partition count."""

    async def close(self) -> None:
        """Disconnect (leases simply expire)."""

    async def balance(self, relay: str, ttl: float) -> frozenset[int]:
        """Heartbeat, renew, release extras, acquire up to the fair share; return held."""

    async def renew(self, relay: str, ttl: float, ids: list[int]) -> frozenset[int]:
        """Extend the relay's unexpired partition leases, its heartbeat and the leases of
        its claimed rows ``ids`` by ``ttl`` from now (no rebalancing); return held."""

    async def release(self, relay: str) -> None:
        """Give up every partition and the heartbeat (clean shutdown)."""

    async def claim(self, relay: str, limit: int) -> list[OutboxRow]:
        """Lease up to ``limit`` unpublished rows of held partitions, in id order."""

    async def mark_published(self, relay: str, ids: list[int]) -> list[int]:
        """Mark ``ids`` published where the relay still holds the leases; return those."""

    async def oldest_unpublished_age(self) -> float | None:
        """Seconds since the unpublished row with the lowest id was written (``None``:
        none pending); a cheap stand-in for the oldest one."""

    async def purge(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` rows published more than ``older_than`` seconds ago."""

    async def wait_for_rows(self, max_wait: float) -> None:
        """Return when new rows may have been committed, or after ``max_wait`` seconds."""
