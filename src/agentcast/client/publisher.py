"""The publishing path of a client: sending a publish, waiting for its ack, retrying a
refusal that may pass, and resending the unacked publishes on a new connection.

Contracts (see also :mod:`agentcast.client.client`):

* Every publish carries an idempotency key (the caller's, or a random one) that never
  changes across resends and retries, so the node can recognise a publish it already
  sequenced.
* A publish waiting for its ack is tracked in issue order until acked, refused, timed out
  or cancelled. A new connection resends every tracked publish it has not carried yet,
  oldest first, before it counts as established; a publish issued meanwhile waits for the
  connection and sends itself after those, which keeps the original order.
* An ``overloaded`` or ``unavailable`` refusal (:data:`RETRYABLE_PUBLISH_CODES`) is retried
  with backoff and the same key while ``ack_timeout`` allows (each retry counted in
  :attr:`Publisher.retries`); another refusal is raised at once.
* ``ack=False`` writes the publish once and returns: no ack, no resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from typing import Any

from agentcast.client.backoff import Backoff
from agentcast.client.feed import renew
from agentcast.client.inflight import InflightPublishes, PendingPublish
from agentcast.client.link import Link, LinkLost
from agentcast.client.results import PublishAck
from agentcast.client.session import Session
from agentcast.errors import ClientError, ConnectionClosed

# Publish refusals that may pass: retried with backoff and the same idempotency key.
RETRYABLE_PUBLISH_CODES = frozenset({"overloaded", "unavailable"})


class Publisher:
    """Publishes of one client, over its :class:`~agentcast.client.session.Session`.

    ``backoff`` gives the retry delays' bounds (``initial`` and ``maximum``); each publish
    retries on a fresh schedule of its own.
    """

    def __init__(self, session: Session, backoff: Backoff) -> None:
        self._session = session
        self._backoff = backoff
        self.inflight = InflightPublishes()
        self.retries = 0

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        correlation_id: str | None,
        causation_id: str | None,
        ack: bool,
    ) -> PublishAck | None:
        """Publish one event; see :meth:`agentcast.client.client.Client.publish`."""
        loop = asyncio.get_running_loop()
        deadline = self._session.deadline()
        command: dict[str, Any] = {
            "cmd": "publish",
            "topic": topic,
            "payload": payload,
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
        }
        if headers:
            command["headers"] = dict(headers)
        if correlation_id is not None:
            command["correlation_id"] = correlation_id
        if causation_id is not None:
            command["causation_id"] = causation_id
        if not ack:
            command["ack"] = False
            await self._session.send(command, deadline)
            return None
        pending = PendingPublish(command)
        token = self.inflight.add(pending)
        retry = Backoff(self._backoff.initial, self._backoff.maximum)
        try:
            while True:
                # Once a link is ready, the reconnect has resent every older pending publish:
                # sending now keeps the original order. If this one was resent too, skip it.
                link = await self._session.wait_link(deadline)
                if pending.generation != link.generation and not pending.future.done():
                    with contextlib.suppress(LinkLost):  # if lost, the next link resends it
                        await self._transmit(link, pending)
                try:
                    async with asyncio.timeout_at(deadline):
                        result = await pending.future
                    break
                except ClientError as exc:
                    if exc.code not in RETRYABLE_PUBLISH_CODES:
                        raise
                    delay = retry.next_delay()
                    if loop.time() + delay >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    self.retries += 1
                    pending.renew()
        finally:
            self.inflight.remove(token)
        return PublishAck.from_result(result)

    async def resend(self, link: Link) -> None:
        """Send every unacked publish not yet sent on ``link``, oldest first.

        Publishes issued while this runs wait for the link to be ready and send themselves,
        after these.
        """
        for pending in self.inflight.unsent(link.generation):
            if not pending.future.done():
                await self._transmit(link, pending)

    def fail_all(self, error: ConnectionClosed) -> None:
        """The client ended: fail every waiting publish with a copy of ``error``."""
        self.inflight.fail_all(lambda: renew(error))

    async def _transmit(self, link: Link, pending: PendingPublish) -> None:
        """Send (or resend) a pending publish on ``link`` with a fresh id and the current clock."""
        pending.generation = link.generation
        await link.send_resendable(
            {**pending.command, "lamport": self._session.lamport}, pending.future
        )
