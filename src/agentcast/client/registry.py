"""The client's live subscriptions: routing of events and what to renew after a reconnect."""

from __future__ import annotations

from collections.abc import Iterator

from agentcast.client.feed import EndError, renew
from agentcast.client.subscription import Subscription
from agentcast.protocol.envelope import Envelope
from agentcast.protocol.topics import matches


class SubscriptionRegistry:
    """Live subscriptions in subscribe order.

    Several local subscriptions may share a pattern; the node holds one subscription per
    pattern per connection (the latest options win), so renewal and unsubscribe work per
    pattern while delivery works per local subscription.
    """

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def __iter__(self) -> Iterator[Subscription]:
        return iter(tuple(self._subscriptions))

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __contains__(self, sub: object) -> bool:
        return sub in self._subscriptions

    def add(self, sub: Subscription) -> None:
        """Start routing matching events to ``sub``."""
        self._subscriptions.append(sub)

    def discard(self, sub: Subscription) -> None:
        """Stop routing to ``sub`` (it is not ended here)."""
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def holds(self, pattern: str) -> bool:
        """Whether a live subscription uses ``pattern``."""
        return any(sub.pattern == pattern for sub in self._subscriptions)

    def route(self, event: Envelope) -> None:
        """Hand ``event`` to every live subscription whose pattern matches its topic."""
        topic = event.topic
        for sub in self._subscriptions:
            if matches(sub.pattern, topic):
                sub.deliver(event)

    def groups(self) -> list[list[Subscription]]:
        """The confirmed subscriptions grouped by pattern, patterns in first-subscribe order
        and each group in subscribe order (its last member holds the newest options). The
        node holds one subscription per pattern, so each group is renewed as one."""
        groups: dict[str, list[Subscription]] = {}
        for sub in self._subscriptions:
            if sub.confirmed:
                groups.setdefault(sub.pattern, []).append(sub)
        return list(groups.values())

    def refuse(self, pattern: str, error: EndError) -> None:
        """The node refused to renew ``pattern``: end its subscriptions with ``error``."""
        for sub in [s for s in self._subscriptions if s.pattern == pattern]:
            self._subscriptions.remove(sub)
            sub.end(renew(error))

    def end_all(self, error: EndError, *, graceful: bool) -> None:
        """End every subscription: a stop (``graceful``) or a failure with ``error``."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            if graceful:
                sub.end(reason=renew(error))
            else:
                sub.end(renew(error))
