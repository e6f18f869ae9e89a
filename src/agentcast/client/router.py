"""Routing of server messages on a client: a reply to the command waiting for it, an event to
every matching subscription, a group delivery to its membership.

Contracts: routing runs in the reader task of the link the message came on and never blocks.
A reply only resolves a command sent on that same link; a reply nobody waits for any more is
dropped (a refusal in it is logged). Every event, delivery and successful reply moves the
client's Lamport clock forward to the time it carries. A malformed message is logged and
skipped.
"""

from __future__ import annotations

import logging

from agentcast.client.groups import GroupRegistry
from agentcast.client.link import Link
from agentcast.client.messages import GroupEvent, MalformedMessage, Reply, decode_server_message
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.session import Session
from agentcast.protocol.envelope import Envelope

log = logging.getLogger("agentcast.client")


class MessageRouter:
    """Hands each server message of a client to whoever waits for it."""

    def __init__(
        self, session: Session, subscriptions: SubscriptionRegistry, groups: GroupRegistry
    ) -> None:
        self._session = session
        self._subscriptions = subscriptions
        self._groups = groups

    def on_message(self, link: Link, message: str | bytes) -> None:
        """Route one server message received on ``link``."""
        try:
            decoded = decode_server_message(message)
        except MalformedMessage as exc:
            log.warning("agentcast client ignored a server message: %s", exc)
            return
        if isinstance(decoded, Reply):
            self._on_reply(link, decoded)
        elif isinstance(decoded, Envelope):
            self._session.observe(decoded.lamport)
            self._subscriptions.route(decoded)
        elif isinstance(decoded, GroupEvent):
            self._session.observe(decoded.envelope.lamport)
            self._groups.route(link, decoded)

    def _on_reply(self, link: Link, reply: Reply) -> None:
        self._session.observe(reply.lamport)
        waiter = link.take(reply.id)
        if waiter is None:
            if reply.error is not None:
                log.warning(
                    "agentcast node refused a command: %s (%s)", reply.error, reply.error.code
                )
            return
        if waiter.future.done():
            return
        if reply.error is not None:
            waiter.future.set_exception(reply.error)
        else:
            waiter.future.set_result(reply.result)
