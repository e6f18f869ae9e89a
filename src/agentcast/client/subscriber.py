"""Subscribing on the node for a client: confirming a new subscription or consumer-group
membership, and releasing one.

Contracts:

* A subscription or membership is routed to from the moment it is registered, before the
  node confirmed it (so no event sent right behind the confirmation is missed). If the
  confirmation fails in any way it is forgotten and ended (a requested end) before the error
  is raised.
* Releasing ends it locally at once and is idempotent. The node is told only when the
  session is established (otherwise the next connection simply does not renew it) and, for a
  plain subscription, only when no other live local subscription holds the same pattern. A
  link lost meanwhile or a ``not_subscribed`` refusal is not an error.
"""

from __future__ import annotations

from typing import Any

from agentcast.client.groups import GroupRegistry, GroupSubscription, left
from agentcast.client.link import LinkLost
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.session import Session
from agentcast.client.subscription import Subscription, unsubscribed
from agentcast.errors import ClientError


class Subscriber:
    """Subscriptions and group memberships of one client, on the node side."""

    def __init__(
        self, session: Session, subscriptions: SubscriptionRegistry, groups: GroupRegistry
    ) -> None:
        self._session = session
        self._subscriptions = subscriptions
        self._groups = groups

    async def subscribe(self, sub: Subscription, deadline: float) -> None:
        """Register ``sub`` and have the node confirm it by ``deadline``; take in the node's
        answer to its history request (from ``sub.since``, if any)."""
        self._subscriptions.add(sub)
        try:
            result = await self._session.call(sub.command(), deadline)
        except BaseException:
            self._forget_subscription(sub)
            raise
        sub.apply_history_reply(result, since=sub.since)
        sub.confirmed = True

    async def join(self, membership: GroupSubscription, deadline: float) -> None:
        """Register ``membership`` and have the node confirm the join by ``deadline``.

        Raises ``ValueError`` at once if the client is already a member of that group.
        """
        self._groups.add(membership)
        try:
            result = await self._session.call(membership.command(), deadline)
        except BaseException:
            self._forget_membership(membership)
            raise
        membership.joined(result)

    async def release(self, sub: Subscription) -> None:
        """End ``sub``; unsubscribe on the node unless another live one has its pattern."""
        if not self._forget_subscription(sub) or self._subscriptions.holds(sub.pattern):
            return
        await self._unsubscribe({"cmd": "unsubscribe", "topic": sub.pattern})

    async def leave(self, membership: GroupSubscription) -> None:
        """End ``membership``; tell the node the connection leaves the group."""
        if not self._forget_membership(membership):
            return
        command = {"cmd": "unsubscribe", "topic": membership.topic, "group": membership.group}
        await self._unsubscribe(command)

    def _forget_subscription(self, sub: Subscription) -> bool:
        """Stop routing to ``sub`` and end it; whether it was live."""
        live = sub in self._subscriptions
        self._subscriptions.discard(sub)
        sub.end(reason=unsubscribed(sub.pattern))
        return live

    def _forget_membership(self, membership: GroupSubscription) -> bool:
        """Stop routing to ``membership`` and end it; whether it was live."""
        live = membership in self._groups
        self._groups.discard(membership)
        membership.end(reason=left(membership.topic, membership.group))
        return live

    async def _unsubscribe(self, command: dict[str, Any]) -> None:
        """Send ``command`` on the current connection if it is open, established or still
        restoring (a restore in progress may already have renewed what is being dropped; a
        connection made later does not restore it); a lost link or ``not_subscribed``
        refusal is fine."""
        link = self._session.link
        if link is None or not link.alive:
            return
        try:
            await link.request(command, self._session.deadline())
        except LinkLost:
            return
        except ClientError as exc:
            if exc.code != "not_subscribed":
                raise
