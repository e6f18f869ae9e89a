"""Restoring a client's subscriptions on a new connection.

Every pattern the client holds is renewed once (several local subscriptions may share it):

* an exact topic with a known position and default options goes into the ``hello``'s
  ``resume`` (at most :data:`MAX_RESUME_TOPICS`), so it is subscribed and recovered in the
  same round trip as the session itself;
* another exact topic with a known position (non-default options, or past that limit) is
  renewed with ``subscribe`` + ``since``, sent right behind the ``hello``;
* everything else (wildcards, topics with no position yet, topics known to be ephemeral) is
  renewed with its original ``subscribe`` command, also right behind the ``hello``.

Outcomes: a position the node recovered continues where it stopped; one it could not
recover counts a gap and continues from the node's current position (the topic's gap
policy decided what was sent). A topic the node says is ``not_durable`` is subscribed again
live. ``unavailable``, ``overloaded`` and ``internal`` refusals fail the restore with
:class:`RestoreFailed` (the client then reconnects with backoff and tries again); any other
refusal (``position_lost``, ``too_many_subscriptions``, ...) ends that pattern's local
subscriptions with the node's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentcast.client.link import LinkLost
from agentcast.client.messages import refusal
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.subscription import Subscription
from agentcast.errors import ClientError
from agentcast.protocol.commands import MAX_RESUME_TOPICS, Position

TRANSIENT_CODES = frozenset({"unavailable", "overloaded", "internal"})

Request = Callable[[dict[str, Any]], Awaitable[Any]]


class RestoreFailed(LinkLost):
    """The node could not restore a subscription for a reason that may pass (its store
    failed, it was overloaded); the connection is dropped and the client reconnects."""


def group_position(subs: list[Subscription]) -> Position | None:
    """Where a pattern's local subscriptions resume from: the oldest known position in the
    epoch seen most recently (every member then gets at least what it has not seen)."""
    known = [sub for sub in subs if sub.exact and sub.position is not None]
    if not known:
        return None
    newest = max(known, key=lambda sub: sub.position_update).position
    assert newest is not None
    same_epoch = [
        sub.position for sub in known if sub.position and sub.position.epoch == newest.epoch
    ]
    return min(same_epoch, key=lambda position: position.seq)


@dataclass(slots=True)
class Renewal:
    """One pattern to renew: its local subscriptions and the position they resume from."""

    subs: list[Subscription]
    position: Position | None

    @property
    def pattern(self) -> str:
        return self.subs[0].pattern

    @property
    def latest(self) -> Subscription:
        """The member with the newest options."""
        return self.subs[-1]

    @property
    def resumable(self) -> bool:
        return self.position is not None and self.latest.resumable

    def command(self) -> tuple[dict[str, Any], Position | None]:
        """The ``subscribe`` command that renews the pattern, and the ``since`` it carries."""
        latest = self.latest
        if self.position is not None and latest.exact and latest.durable is not False:
            return latest.resume_command(self.position), self.position
        history = latest.durable is not False
        return latest.command(history=history), latest.since if history else None

    def apply(self, result: Any, since: Position | None) -> None:
        for sub in self.subs:
            sub.apply_history_reply(result, since=since)

    def mark_ephemeral(self) -> None:
        for sub in self.subs:
            sub.durable = False


@dataclass(slots=True)
class RestorePlan:
    """What the next connection sends to restore the subscriptions, and how it reads the
    answers. Build it, send :meth:`resume_field` in the ``hello`` and :meth:`commands` right
    behind it, then hand the answers to :meth:`finish`."""

    resumed: list[Renewal] = field(default_factory=list)
    subscribed: list[tuple[Renewal, dict[str, Any], Position | None]] = field(default_factory=list)

    @classmethod
    def build(cls, groups: list[list[Subscription]]) -> RestorePlan:
        plan = cls()
        for subs in groups:
            renewal = Renewal(subs, group_position(subs))
            if renewal.resumable and len(plan.resumed) < MAX_RESUME_TOPICS:
                plan.resumed.append(renewal)
            else:
                command, since = renewal.command()
                plan.subscribed.append((renewal, command, since))
        return plan

    def resume_field(self) -> dict[str, dict[str, Any]]:
        """The ``hello``'s ``resume`` object (empty when nothing resumes)."""
        field_: dict[str, dict[str, Any]] = {}
        for renewal in self.resumed:
            position = renewal.position
            assert position is not None
            field_[renewal.pattern] = {"epoch": position.epoch, "seq": position.seq}
        return field_

    def commands(self) -> list[dict[str, Any]]:
        """The ``subscribe`` commands to send right behind the ``hello``, in order."""
        return [command for _, command, _ in self.subscribed]

    async def finish(
        self,
        resume_result: Any,
        outcomes: list[Any],
        request: Request,
        registry: SubscriptionRegistry,
    ) -> None:
        """Apply the ``hello``'s ``resume`` result and the outcomes of :meth:`commands`
        (a result or an exception each, in order); renew live the topics the node says are
        not durable, through ``request``.

        Raises :class:`RestoreFailed` on a transient refusal and re-raises an outcome that
        is not a :class:`~agentcast.errors.ClientError` (a lost link, a timeout).
        """
        entries = resume_result if isinstance(resume_result, Mapping) else {}
        followups: list[Renewal] = []
        for renewal in self.resumed:
            entry = entries.get(renewal.pattern)
            if isinstance(entry, Mapping) and "error" in entry:
                error = refusal(entry["error"], "the node refused the subscription")
                if error.code == "not_durable":
                    renewal.mark_ephemeral()
                    followups.append(renewal)
                else:
                    _refuse(registry, renewal, error)
            elif isinstance(entry, Mapping):
                renewal.apply(entry, renewal.position)
            else:  # not answered: renew it with a subscribe of its own
                followups.append(renewal)
        for (renewal, command, since), outcome in zip(self.subscribed, outcomes, strict=True):
            if isinstance(outcome, ClientError):
                if outcome.code == "not_durable" and _wants_history(command):
                    renewal.mark_ephemeral()
                    followups.append(renewal)
                else:
                    _refuse(registry, renewal, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                renewal.apply(outcome, since)
        if not followups:
            return
        retries = [renewal.command() for renewal in followups]
        results = await asyncio.gather(
            *(request(command) for command, _ in retries), return_exceptions=True
        )
        for renewal, (_, since), outcome in zip(followups, retries, results, strict=True):
            if isinstance(outcome, ClientError):
                _refuse(registry, renewal, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                renewal.apply(outcome, since)


def _wants_history(command: Mapping[str, Any]) -> bool:
    return any(command.get(name) is not None for name in ("since", "last", "since_time"))


def raise_if_transient(error: ClientError, what: str) -> None:
    """Raise :class:`RestoreFailed` if the node refused to restore ``what`` for a reason
    that may pass (:data:`TRANSIENT_CODES`)."""
    if error.code in TRANSIENT_CODES:
        raise RestoreFailed(f"the node could not restore {what}: {error.message} ({error.code})")


def _refuse(registry: SubscriptionRegistry, renewal: Renewal, error: ClientError) -> None:
    raise_if_transient(error, repr(renewal.pattern))
    registry.refuse(renewal.pattern, error)
