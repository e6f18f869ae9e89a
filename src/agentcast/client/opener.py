"""Opening one connection of a client and restoring its session on it.

Contracts: :meth:`ConnectionOpener.open` makes the new link the session's current one as
soon as the socket is open (its reader routes messages from then on), then, in one round
trip, says ``hello`` (resuming the durable topics from their positions), renews the other
subscriptions and joins the consumer groups again (see :mod:`agentcast.client.restore`),
then resends the unacked publishes; only then is the link established (``ready``). On any
failure the link is shut down and forgotten, and the error is raised: ``OSError`` or a
``websockets`` error if the socket cannot be opened, a refused ``hello`` as
:class:`~agentcast.errors.ClientError`, a link lost meanwhile (or a transient refusal of a
renewal, :class:`~agentcast.client.restore.RestoreFailed`) as
:class:`~agentcast.client.link.LinkLost`, no answer in time as :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect as ws_connect

from agentcast.client.groups import GroupRegistry
from agentcast.client.link import Link, LinkLost
from agentcast.client.publisher import Publisher
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.restore import RestorePlan
from agentcast.client.router import MessageRouter
from agentcast.client.session import Session
from agentcast.protocol.commands import PROTOCOL_VERSION


class ConnectionOpener:
    """Opens the connections of one client (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        router: MessageRouter,
        publisher: Publisher,
        subscriptions: SubscriptionRegistry,
        groups: GroupRegistry,
    ) -> None:
        self._session = session
        self._router = router
        self._publisher = publisher
        self._subscriptions = subscriptions
        self._groups = groups

    async def open(self) -> None:
        """Connect, say hello, renew subscriptions, resend unacked publishes, then go ready."""
        session = self._session
        settings = session.settings
        ws = await ws_connect(
            settings.url,
            open_timeout=settings.connect_timeout,
            close_timeout=settings.connect_timeout,
            max_size=settings.max_message_bytes,
            compression=None,
        )
        link = Link(ws, next(session.generations), session.command_ids)
        session.link = link
        link.reader = asyncio.create_task(
            link.read(self._router.on_message), name="agentcast-client-reader"
        )
        try:
            await self._restore_session(link)
            await self._publisher.resend(link)
            if not link.alive:
                raise LinkLost("the connection closed while the session was restored")
            link.ready = True
            session.changed.set()
        except BaseException:
            await session.close_link(link)
            raise

    async def _restore_session(self, link: Link) -> None:
        """Say ``hello`` (resuming durable topics from their positions), renew the other
        subscriptions and join the consumer groups again right behind it, in one round trip;
        end refused subscriptions and memberships."""
        session = self._session
        settings = session.settings
        deadline = session.deadline()
        plan = RestorePlan.build(self._subscriptions.groups())
        renewals = plan.commands()
        joins = self._groups.restore_commands()
        hello_command: dict[str, Any] = {
            "cmd": "hello",
            "client": settings.name,
            "token": settings.token,
            "protocol": PROTOCOL_VERSION,
        }
        resume = plan.resume_field()
        if resume:
            hello_command["resume"] = resume
        # Tasks start in order and each writes its frame before it first waits, so the
        # node reads the hello first.
        hello, *outcomes = await asyncio.gather(
            link.request(hello_command, deadline),
            *(link.request(command, deadline) for command in renewals),
            *(link.request(command, deadline) for _, command in joins),
            return_exceptions=True,
        )
        if isinstance(hello, BaseException):
            raise hello
        resumed: Any = None
        if isinstance(hello, dict):
            session.connection_id = link.connection_id = hello.get("connection")
            session.node_id = link.node_id = hello.get("node")
            interval = hello.get("heartbeat_interval")
            if isinstance(interval, int | float) and interval > 0:
                link.heartbeat_interval = float(interval)
            resumed = hello.get("resume")

        async def request(command: dict[str, Any]) -> Any:
            return await link.request(command, deadline)

        await plan.finish(resumed, outcomes[: len(renewals)], request, self._subscriptions)
        self._groups.finish_restore(joins, outcomes[len(renewals) :])
