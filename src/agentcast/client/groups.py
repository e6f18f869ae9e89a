"""Consumer-group membership on the client: deliveries to ack or nack, and the buffer they
wait in.

A :class:`GroupSubscription` is this client's membership in one consumer group of one
durable topic (see docs/protocol.md, "Consumer groups"). The node hands each event of the
topic to one member at a time; the member must settle it with :meth:`GroupDelivery.ack` or
:meth:`GroupDelivery.nack`.

Contracts:

* **At-least-once.** An event is done only once a member acked it (or the node dead-lettered
  it after ``max_deliver`` attempts). A delivery not acked within the group's
  ``ack_timeout``, nacked, or held by a member that leaves or disconnects is delivered again
  (attempt + 1), to any member. Processing must therefore be idempotent; the SDK's
  :class:`~agentcast.client.idempotent.IdempotentHandler` can wrap a handler of
  ``delivery.envelope``.
* **What an ack means.** ``await delivery.ack()`` returns ``True`` once the node recorded the
  event as done for the group (it will not be delivered again, and the group's ack floor
  moves past it). Settling is once per delivery: a second ``ack()``/``nack()`` is a no-op
  that returns ``False``.
* **Acks belong to a connection.** A delivery can only be settled on the connection it came
  on. If that connection is gone (a reconnect happened, or the client was closed) or the
  membership ended (:meth:`GroupSubscription.leave`), the node has already taken the
  delivery back, so the ack is dropped locally, counted in
  :attr:`GroupSubscription.stale_acks`, and returns ``False``; the event comes again. If the
  connection is still there but the node no longer holds the delivery for it (its ack
  timeout passed and it was given to another member), the ack raises
  :class:`~agentcast.errors.ClientError` with code ``not_in_flight``.
* **Never deduplicated.** Unlike a plain subscription, a group subscription hands out every
  delivery, redeliveries included: a redelivery is a new attempt, not a duplicate.
* **Reconnect.** After a reconnect the client joins every group again with the same
  options. Deliveries received on the old connection and not yet handed out are discarded
  (counted in :attr:`GroupSubscription.discarded`): the node redelivers them.
* **Exclusive routing.** Group deliveries reach only their :class:`GroupSubscription`, never
  a plain subscription of the same client whose pattern matches the topic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agentcast.client.feed import EndError, Feed, renew
from agentcast.client.link import Link, LinkLost
from agentcast.client.messages import GroupEvent
from agentcast.client.restore import raise_if_transient
from agentcast.errors import ClientError
from agentcast.protocol.commands import MAX_ACK_TIMEOUT, MAX_HEADER_VALUE
from agentcast.protocol.envelope import Envelope

GroupKey = tuple[str, str]


class GroupOwner(Protocol):
    """What a :class:`GroupSubscription` needs from the client that created it."""

    def _deadline(self) -> float:
        """The loop time by which a command sent now must be answered."""

    async def _leave_group(self, membership: GroupSubscription) -> None:
        """Forget ``membership`` and tell the node the connection left the group."""


@dataclass(slots=True, frozen=True)
class GroupInfo:
    """The node's answer to a join: the group's ack floor (every ``seq`` at or below it is
    done) and the settings in force (fixed by whichever member created the group)."""

    floor: int
    ack_timeout: float
    max_deliver: int
    max_in_flight: int

    @classmethod
    def from_result(cls, result: Any) -> GroupInfo | None:
        """Read a ``subscribe`` reply with ``group``; ``None`` if it lacks the fields (the
        node answers a repeated join on one connection with topic and group only)."""
        if not isinstance(result, Mapping):
            return None
        try:
            return cls(
                floor=int(result["floor"]),
                ack_timeout=float(result["ack_timeout"]),
                max_deliver=int(result["max_deliver"]),
                max_in_flight=int(result["max_in_flight"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class GroupDelivery:
    """One delivery of an event to this member: settle it with :meth:`ack` or :meth:`nack`.

    See the module docstring for what settling promises.
    """

    __slots__ = ("_link", "_membership", "_settled", "attempt", "envelope")

    def __init__(
        self, membership: GroupSubscription, link: Link, envelope: Envelope, attempt: int
    ) -> None:
        self.envelope = envelope
        self.attempt = attempt
        self._membership = membership
        self._link = link
        self._settled = False

    @property
    def topic(self) -> str:
        return self.envelope.topic

    @property
    def group(self) -> str:
        return self._membership.group

    @property
    def seq(self) -> int:
        return self.envelope.seq

    @property
    def settled(self) -> bool:
        """Whether :meth:`ack` or :meth:`nack` was already called."""
        return self._settled

    @property
    def current(self) -> bool:
        """Whether the node may still hold this delivery for us: its connection is open and
        the membership has not ended."""
        return self._link.alive and self._membership.active

    async def ack(self) -> bool:
        """Mark the event done for the group.

        Returns ``True`` when the node confirmed, ``False`` when nothing was sent (already
        settled, or the delivery is stale: counted in ``stale_acks``). Raises
        :class:`~agentcast.errors.ClientError` ``not_in_flight`` when the node gave the
        delivery to another member meanwhile (its ack timeout passed), and
        :class:`TimeoutError` when the node did not answer within the client's
        ``ack_timeout`` (the ack may or may not have been recorded).
        """
        return await self._settle({"cmd": "ack"})

    async def nack(self, delay: float = 0.0, reason: str = "") -> bool:
        """Give the event back: it is delivered again (to any member) after ``delay``
        seconds, or dead-lettered with ``reason`` if this was the last allowed attempt.

        ``delay`` is 0 to 86400 seconds (the node checks due redeliveries about once a
        second); ``reason`` is cut to 1024 characters. Returns and raises like :meth:`ack`.
        """
        if not (isinstance(delay, int | float) and math.isfinite(delay)):
            raise ValueError("delay must be a finite number of seconds")
        if not 0 <= delay <= MAX_ACK_TIMEOUT:
            raise ValueError(f"delay must be between 0 and {MAX_ACK_TIMEOUT:g} seconds")
        command: dict[str, Any] = {"cmd": "nack", "delay": float(delay)}
        if reason:
            command["reason"] = reason[:MAX_HEADER_VALUE]
        return await self._settle(command)

    async def _settle(self, command: dict[str, Any]) -> bool:
        if self._settled:
            return False
        self._settled = True
        membership = self._membership
        if not self.current:
            membership.stale_acks += 1
            return False
        command.update(topic=self.topic, group=membership.group, seq=self.seq)
        try:
            await self._link.request(command, membership.owner._deadline())
        except LinkLost:
            membership.stale_acks += 1
            return False
        return True

    def __repr__(self) -> str:
        state = "settled" if self._settled else "open"
        return (
            f"<GroupDelivery {self.topic}#{self.seq} group={self.group!r} "
            f"attempt={self.attempt} {state}>"
        )


class GroupSubscription(Feed[GroupDelivery]):
    """This client's membership in the consumer group ``group`` of the durable ``topic``.

    Consume with ``async for delivery in gsub`` or ``await gsub.get()``; each item is a
    :class:`GroupDelivery`. The local buffer holds what the node sent and is bounded by the
    group's ``max_in_flight`` (times the attempts of redeliveries still buffered).

    The end comes as: :meth:`leave` or ``Client.close()``: ``async for`` stops and
    :meth:`get` raises (``not_subscribed`` or ``ConnectionClosed`` with code 1000); a
    terminal connection failure or a refused re-join after a reconnect: both raise that
    error. Buffered deliveries are discarded at the end, since the node gives them back to
    the group when the member leaves.

    Counters: :attr:`received` (deliveries received), :attr:`stale_acks` (acks and nacks
    dropped because their connection or membership was gone), :attr:`discarded` (buffered
    deliveries dropped for the same reason before being handed out) and :attr:`rejoins`
    (joins after a reconnect). :attr:`info` is the node's latest answer to a join.
    """

    def __init__(
        self,
        owner: GroupOwner,
        topic: str,
        group: str,
        *,
        ack_timeout: float | None = None,
        max_deliver: int | None = None,
        max_in_flight: int | None = None,
        key_header: str = "key",
        dead_letter_topic: str | None = None,
    ) -> None:
        super().__init__()
        self.owner = owner
        self.topic = topic
        self.group = group
        self.ack_timeout = ack_timeout
        self.max_deliver = max_deliver
        self.max_in_flight = max_in_flight
        self.key_header = key_header
        self.dead_letter_topic = dead_letter_topic
        self.info: GroupInfo | None = None
        self.confirmed = False
        self.received = 0
        self.stale_acks = 0
        self.discarded = 0
        self.rejoins = 0

    @property
    def key(self) -> GroupKey:
        return (self.topic, self.group)

    def command(self) -> dict[str, Any]:
        """The ``subscribe`` command (without ``id``) that joins the group."""
        command: dict[str, Any] = {
            "cmd": "subscribe",
            "topic": self.topic,
            "group": self.group,
            "key_header": self.key_header,
        }
        options = {
            "ack_timeout": self.ack_timeout,
            "max_deliver": self.max_deliver,
            "max_in_flight": self.max_in_flight,
            "dead_letter_topic": self.dead_letter_topic,
        }
        command.update({name: value for name, value in options.items() if value is not None})
        return command

    # -- called by the client ------------------------------------------------------------

    def joined(self, result: Any) -> None:
        """The node accepted a join: remember its answer."""
        info = GroupInfo.from_result(result)
        if info is not None:
            self.info = info
        if self.confirmed:
            self.rejoins += 1
        self.confirmed = True

    def deliver(self, link: Link, event: GroupEvent) -> None:
        """Buffer a delivery received on ``link``; never blocks."""
        if self._ended:
            return
        self.received += 1
        self._push(GroupDelivery(self, link, event.envelope, event.attempt))

    def end(self, error: EndError | None = None, *, reason: EndError | None = None) -> None:
        """End the membership and discard the buffered deliveries. With ``error`` the
        consumer sees a failure; without, ``async for`` stops and :meth:`get` raises
        ``reason``."""
        if self._ended:
            return
        self.discarded += len(self._buffer)
        self._buffer.clear()
        self._finish(error, reason or left(self.topic, self.group))

    # -- consumer API (and :meth:`get`, ``async for`` from :class:`Feed`) ------------------

    async def leave(self) -> None:
        """Leave the group: the node gives this member's unacked deliveries to the others
        at once. Buffered deliveries are discarded and later acks are stale. Idempotent."""
        await self.owner._leave_group(self)

    def _take(self) -> GroupDelivery | None:
        """The next buffered delivery still current; stale ones are discarded (counted)."""
        while self._buffer:
            delivery = self._buffer.popleft()
            if delivery.current:
                return delivery
            self.discarded += 1
        return None

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return (
            f"<GroupSubscription {self.topic!r} group={self.group!r} {state} "
            f"pending={self.pending}>"
        )


def left(topic: str, group: str) -> ClientError:
    """The end reason of a membership ended by ``leave()``."""
    return ClientError(f"left group {group!r} on {topic!r}", code="not_subscribed")


class GroupRegistry:
    """The client's group memberships, one per ``(topic, group)``, in join order."""

    def __init__(self) -> None:
        self._members: dict[GroupKey, GroupSubscription] = {}

    def __iter__(self) -> Iterator[GroupSubscription]:
        return iter(tuple(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, membership: object) -> bool:
        return isinstance(membership, GroupSubscription) and (
            self._members.get(membership.key) is membership
        )

    def add(self, membership: GroupSubscription) -> None:
        """Start routing the group's deliveries to ``membership``; ``ValueError`` if this
        client is already a member of that group (the node holds one membership per
        connection)."""
        if membership.key in self._members:
            raise ValueError(
                f"this client is already a member of group {membership.group!r} "
                f"on {membership.topic!r}"
            )
        self._members[membership.key] = membership

    def discard(self, membership: GroupSubscription) -> None:
        if membership in self:
            del self._members[membership.key]

    def route(self, link: Link, event: GroupEvent) -> None:
        """Hand a delivery to its membership; one for a group this client left is ignored
        (the node took it back when the member left)."""
        membership = self._members.get((event.envelope.topic, event.group))
        if membership is not None:
            membership.deliver(link, event)

    def restore_commands(self) -> list[tuple[GroupSubscription, dict[str, Any]]]:
        """The joins a new connection sends, for every confirmed membership."""
        return [(m, m.command()) for m in self._members.values() if m.confirmed]

    def finish_restore(
        self, joins: list[tuple[GroupSubscription, dict[str, Any]]], outcomes: list[Any]
    ) -> None:
        """Apply the answers to :meth:`restore_commands` (a result or an exception each).

        Raises :class:`~agentcast.client.restore.RestoreFailed` on a transient refusal and
        re-raises an outcome that is not a :class:`~agentcast.errors.ClientError`; any other
        refusal ends that membership with the node's error.
        """
        for (membership, _), outcome in zip(joins, outcomes, strict=True):
            if isinstance(outcome, ClientError):
                raise_if_transient(outcome, f"group {membership.group!r} on {membership.topic!r}")
                self.discard(membership)
                membership.end(renew(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                membership.joined(outcome)

    def end_all(self, error: EndError, *, graceful: bool) -> None:
        """End every membership: a stop (``graceful``) or a failure with ``error``."""
        members, self._members = self._members, {}
        for membership in members.values():
            if graceful:
                membership.end(reason=renew(error))
            else:
                membership.end(renew(error))
