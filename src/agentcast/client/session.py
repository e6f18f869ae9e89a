"""What one client keeps across its connections: the current link, the Lamport clock, the
terminal failure, and the waits on them.

Contracts:

* :meth:`Session.wait_link` returns only an established link (``hello`` answered, session
  restored, socket open). It raises the client's failure (a fresh copy) once the client
  ended, and :class:`TimeoutError` at the deadline.
* :meth:`Session.on_link` runs an action on the current established link and, when that
  link is lost before the action completes, again on the next one, all within the deadline.
* The Lamport clock only moves forward (:meth:`Session.observe`).
* :attr:`Session.changed` is set whenever the link becomes established or the client ends;
  a waiter clears it before it waits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from agentcast.client.feed import renew
from agentcast.client.link import Link, LinkLost
from agentcast.errors import ConnectionClosed

R = TypeVar("R")


class Settings(Protocol):
    """The options of a client, read by its parts each time they use one (so a change
    applies from the next use on). :class:`~agentcast.client.client.Client` provides them."""

    url: str
    name: str | None
    token: str | None
    reconnect: bool
    ack_timeout: float
    connect_timeout: float
    max_reconnect_attempts: int
    max_message_bytes: int


class Session:
    """The state the parts of one client share.

    :attr:`link` is the current connection (``None`` between connections);
    :attr:`connection_id` and :attr:`node_id` are those the node gave in its latest ``hello``
    answer; :attr:`failure` is set once, when the client ends. Command ids come from
    :attr:`command_ids` (unique across links) and each link gets the next number of
    :attr:`generations`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.link: Link | None = None
        self.lamport = 0
        self.failure: ConnectionClosed | None = None
        self.changed = asyncio.Event()
        self.connection_id: str | None = None
        self.node_id: str | None = None
        self.command_ids = itertools.count(1)
        self.generations = itertools.count(1)

    @property
    def established(self) -> Link | None:
        """The current link if the session is established on it (ready and open)."""
        link = self.link
        return link if link is not None and link.ready and link.alive else None

    def deadline(self) -> float:
        """The loop time by which a command sent now must be answered (``ack_timeout``)."""
        return asyncio.get_running_loop().time() + self.settings.ack_timeout

    def observe(self, lamport: int | None) -> None:
        """Move the Lamport clock to ``lamport`` if that is later."""
        if lamport is not None and lamport > self.lamport:
            self.lamport = lamport

    def raise_if_failed(self) -> None:
        """Raise (a copy of) the client's failure once it ended."""
        if self.failure is not None:
            raise renew(self.failure)

    async def drop_link(self) -> None:
        """Shut the current link down, if there is one, and forget it."""
        link = self.link
        if link is not None:
            await link.shutdown()
            self.link = None

    async def close_link(self, link: Link) -> None:
        """Shut ``link`` down and forget it if it is still the current one."""
        await link.shutdown()
        if self.link is link:
            self.link = None

    async def wait_link(self, deadline: float) -> Link:
        """The current established link, waiting for a reconnect until ``deadline``."""
        async with asyncio.timeout_at(deadline):
            while True:
                self.raise_if_failed()
                link = self.established
                if link is not None:
                    return link
                self.changed.clear()
                await self.changed.wait()

    async def on_link(self, deadline: float, action: Callable[[Link], Awaitable[R]]) -> R:
        """``action`` on the current established link, again on the next one if a link is
        lost (:class:`~agentcast.client.link.LinkLost`) first."""
        while True:
            link = await self.wait_link(deadline)
            try:
                return await action(link)
            except LinkLost:
                continue

    async def call(self, command: dict[str, Any], deadline: float) -> Any:
        """Send ``command`` and return its reply's ``result`` (see :meth:`on_link`)."""
        return await self.on_link(deadline, lambda link: link.request(command, deadline))

    async def send(self, command: dict[str, Any], deadline: float) -> None:
        """Write ``command`` with the current Lamport time once a link is established; no
        reply is awaited and nothing is resent after that."""
        await self.on_link(deadline, lambda link: link.send({**command, "lamport": self.lamport}))
