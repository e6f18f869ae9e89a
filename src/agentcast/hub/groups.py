"""Consumer groups: competing consumers over one durable topic (sans-I/O state machine).

A group reads its topic's history in ``seq`` order and hands each event to one member at a
time. Every delivery must be acked; an event not acked within ``ack_timeout`` (or nacked)
is delivered again, to any member, after its delay; after ``max_deliver`` attempts it is
dead-lettered instead. The group's progress is its *ack floor* (every ``seq`` at or below
it is done) plus the set of done positions above the floor; both are persisted, so after a
restart the group continues from the floor and redelivers whatever was in flight.

Ordering: events are offered in ``seq`` order. With one member and ``max_in_flight`` 1
processing is strictly in order. With ``key_header`` set, an event whose key has an earlier
event still in flight waits for it, so events with the same key are processed one at a time
and in order (per-key ordering) while different keys proceed in parallel. Otherwise
members process concurrently and completion order is not defined.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from agentcast.storage.base import StoredEvent

READ_AHEAD = 256


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """Delivery settings of one group (fixed by its first member's subscribe)."""

    ack_timeout: float = 30.0
    max_deliver: int = 5
    max_in_flight: int = 16
    key_header: str | None = None
    dead_letter_topic: str | None = None


@dataclass(slots=True, eq=False)
class Member:
    """One connection's membership; ``owner`` is opaque to the state machine."""

    owner: object
    inflight: set[int] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class Delivery:
    """One event's delivery state inside a group."""

    event: StoredEvent
    key: str | None
    attempts: int = 0
    member: Member | None = None
    deadline: float = 0.0
    not_before: float = 0.0
    last_reason: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that used up ``max_deliver`` attempts."""

    delivery: Delivery
    reason: str


class ConsumerGroup:
    """State of one group on one topic. Not thread-safe; times are caller-supplied."""

    def __init__(
        self,
        topic: str,
        name: str,
        settings: GroupSettings,
        floor: int = 0,
        done: frozenset[int] = frozenset(),
    ) -> None:
        self.topic = topic
        self.name = name
        self.settings = settings
        self.floor = floor
        self.done_above: set[int] = {seq for seq in done if seq > floor}
        self.cursor = max([floor, *self.done_above])
        self.caught_up = False
        self.members: list[Member] = []
        self.inflight: dict[int, Delivery] = {}
        self._fresh: deque[Delivery] = deque()
        self._retry: list[tuple[float, int]] = []
        self._retrying: dict[int, Delivery] = {}
        self._busy_keys: dict[str, int] = {}
        self._skipped: dict[int, int] = {}  # first -> last of ranges gone from history
        self._next_member = 0
        self._advance_floor()

    # -- membership --------------------------------------------------------------------

    def add_member(self, owner: object) -> Member:
        member = Member(owner)
        self.members.append(member)
        return member

    def remove_member(self, member: Member, now: float) -> None:
        """Forget ``member``; its unacked deliveries become due for redelivery now."""
        if member in self.members:
            self.members.remove(member)
        for seq in sorted(member.inflight):
            delivery = self.inflight.pop(seq)
            delivery.member = None
            delivery.last_reason = "member left"
            self._schedule_retry(delivery, now)
        member.inflight.clear()

    # -- reading -----------------------------------------------------------------------

    def wants_events(self) -> int:
        """How many events to read from history now (0: none). Reading stops while no
        member has room, and read-ahead is bounded by :data:`READ_AHEAD` (events waiting
        behind a busy key count against it)."""
        if self.caught_up or not self._has_capacity():
            return 0
        return max(0, READ_AHEAD - len(self._fresh))

    def add_events(self, events: list[StoredEvent]) -> None:
        """Queue events read from history after :attr:`cursor` (in ``seq`` order)."""
        key_header = self.settings.key_header
        for event in events:
            if event.seq <= self.cursor:
                continue
            if event.seq > self.cursor + 1:
                # Retention removed positions this group never read: they are done.
                self._skipped[self.cursor + 1] = event.seq - 1
                self._advance_floor()
            self.cursor = event.seq
            if event.seq in self.done_above:
                continue
            key = event.headers.get(key_header) if key_header else None
            self._fresh.append(Delivery(event, key))

    def notify_appended(self, seq: int) -> None:
        """A new event was committed on the topic; reading may resume."""
        if seq > self.cursor:
            self.caught_up = False

    # -- assigning ---------------------------------------------------------------------

    def assign(self, now: float) -> tuple[list[Delivery], list[DeadLetter]]:
        """Hand due redeliveries, then fresh events, to members with room.

        Returns the new deliveries (``member`` set, ``attempts`` counted) and the events
        that used up ``max_deliver`` attempts (already removed from the group; the caller
        dead-letters them and then calls :meth:`mark_done`).
        """
        out: list[Delivery] = []
        dead: list[DeadLetter] = []
        while self._retry and self._retry[0][0] <= now and self._has_capacity():
            _, seq = heapq.heappop(self._retry)
            delivery = self._retrying.pop(seq)
            if delivery.attempts >= self.settings.max_deliver:
                self._release_key(delivery)
                dead.append(DeadLetter(delivery, delivery.last_reason or "max_deliver"))
                continue
            if not self._give(delivery, now):
                self._schedule_retry(delivery, now)
                break
            out.append(delivery)
        skipped: list[Delivery] = []
        while self._fresh and self._has_capacity():
            delivery = self._fresh.popleft()
            busy = delivery.key is not None and self._busy_keys.get(delivery.key) not in (
                None,
                delivery.event.seq,
            )
            if busy:
                skipped.append(delivery)
                continue
            if not self._give(delivery, now):
                skipped.append(delivery)
                break
            out.append(delivery)
        self._fresh.extendleft(reversed(skipped))
        return out, dead

    def _give(self, delivery: Delivery, now: float) -> bool:
        member = self._pick_member()
        if member is None:
            return False
        seq = delivery.event.seq
        delivery.member = member
        delivery.attempts += 1
        delivery.deadline = now + self.settings.ack_timeout
        member.inflight.add(seq)
        self.inflight[seq] = delivery
        if delivery.key is not None:
            self._busy_keys[delivery.key] = seq
        return True

    def _pick_member(self) -> Member | None:
        limit = self.settings.max_in_flight
        count = len(self.members)
        for step in range(count):
            member = self.members[(self._next_member + step) % count]
            if len(member.inflight) < limit:
                self._next_member = (self._next_member + step + 1) % count
                return member
        return None

    def _has_capacity(self) -> bool:
        limit = self.settings.max_in_flight
        return any(len(m.inflight) < limit for m in self.members)

    # -- outcomes ----------------------------------------------------------------------

    def ack(self, member: Member, seq: int) -> bool:
        """``member`` processed ``seq``; False if it does not hold that delivery."""
        delivery = self.inflight.get(seq)
        if delivery is None or delivery.member is not member:
            return False
        del self.inflight[seq]
        member.inflight.discard(seq)
        self._release_key(delivery)
        self.mark_done(seq)
        return True

    def nack(self, member: Member, seq: int, delay: float, reason: str, now: float) -> bool:
        """``member`` gives ``seq`` back for redelivery after ``delay`` seconds."""
        delivery = self.inflight.get(seq)
        if delivery is None or delivery.member is not member:
            return False
        del self.inflight[seq]
        member.inflight.discard(seq)
        delivery.member = None
        delivery.last_reason = f"nack: {reason}" if reason else "nack"
        self._schedule_retry(delivery, now + max(0.0, delay))
        return True

    def expire(self, now: float) -> int:
        """Take back deliveries whose ack timeout passed; returns how many."""
        expired = [d for d in self.inflight.values() if d.deadline <= now]
        for delivery in expired:
            seq = delivery.event.seq
            del self.inflight[seq]
            if delivery.member is not None:
                delivery.member.inflight.discard(seq)
            delivery.member = None
            delivery.last_reason = "ack timeout"
            self._schedule_retry(delivery, now)
        return len(expired)

    def retry_dead_letter(self, letter: DeadLetter, when: float) -> None:
        """A dead-letter publish failed: hold the event and dead-letter it again at
        ``when`` (its attempts are used up, so :meth:`assign` dead-letters it again)."""
        delivery = letter.delivery
        delivery.last_reason = letter.reason
        if delivery.key is not None:
            self._busy_keys[delivery.key] = delivery.event.seq
        self._schedule_retry(delivery, when)

    def mark_done(self, seq: int) -> None:
        """Record ``seq`` as finished (acked or dead-lettered) and advance the floor."""
        if seq > self.floor:
            self.done_above.add(seq)
            self._advance_floor()

    def _advance_floor(self) -> None:
        while True:
            following = self.floor + 1
            if following in self.done_above:
                self.floor = following
                self.done_above.discard(following)
            elif following in self._skipped:
                self.floor = self._skipped.pop(following)
            else:
                return

    def _schedule_retry(self, delivery: Delivery, when: float) -> None:
        seq = delivery.event.seq
        delivery.not_before = when
        self._retrying[seq] = delivery
        heapq.heappush(self._retry, (when, seq))

    def _release_key(self, delivery: Delivery) -> None:
        if delivery.key is not None and self._busy_keys.get(delivery.key) == delivery.event.seq:
            del self._busy_keys[delivery.key]

    def has_due(self, now: float) -> bool:
        """Whether a redelivery is due."""
        return bool(self._retry) and self._retry[0][0] <= now

    @property
    def pending(self) -> int:
        """Deliveries waiting: read but unassigned, plus scheduled redeliveries."""
        return len(self._fresh) + len(self._retrying)
