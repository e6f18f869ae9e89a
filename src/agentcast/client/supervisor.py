"""The connection supervisor of a client: the first connect, keepalive, reconnecting with
backoff, and the end of the client.

Contracts:

* :meth:`ConnectionSupervisor.connect` opens the first session without retrying and only
  then starts the supervisor task; a client connects once.
* The supervisor task watches the current link and sends a keepalive ``ping`` when the link
  has been quiet for the node's heartbeat interval. When the link closes and the close code
  allows it (:func:`~agentcast.protocol.codes.should_reconnect`, and ``reconnect`` is on),
  it reconnects with exponential backoff and full jitter, at most
  ``max_reconnect_attempts`` attempts per outage, counting each success in
  :attr:`ConnectionSupervisor.reconnects`.
* The client ends (:meth:`ConnectionSupervisor.terminate`, once) on a close code that
  forbids reconnecting, an exhausted reconnect budget, a refused ``hello`` on reconnect, or
  :meth:`ConnectionSupervisor.close`: waiting publishes and subscriptions fail with
  :class:`~agentcast.errors.ConnectionClosed` (after ``close()`` subscriptions and
  memberships stop instead).
* :meth:`ConnectionSupervisor.close` cancels and awaits the supervisor task (which owns the
  reconnects) and shuts the current link down; it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from websockets.exceptions import WebSocketException

from agentcast.client.backoff import Backoff
from agentcast.client.groups import GroupRegistry
from agentcast.client.link import Link, LinkLost
from agentcast.client.publisher import Publisher
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.session import Session
from agentcast.client.subscription import client_closed
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.protocol.codes import should_reconnect

log = logging.getLogger("agentcast.client")

# Failures of one connection attempt that a later attempt may not hit.
_RETRYABLE = (OSError, TimeoutError, WebSocketException, LinkLost)
# Refusals of a reconnect hello that mean "later", not "never" (docs/protocol.md).
_RETRYABLE_REFUSALS = frozenset({"too_many_connections", "overloaded", "unavailable"})


class ConnectionSupervisor:
    """Keeps one client connected (see the module docstring).

    ``open`` opens one connection and restores the session on it (raising what
    :meth:`~agentcast.client.opener.ConnectionOpener.open` raises); ``backoff`` spaces the
    reconnect attempts.
    """

    def __init__(
        self,
        session: Session,
        open: Callable[[], Awaitable[None]],
        backoff: Backoff,
        publisher: Publisher,
        subscriptions: SubscriptionRegistry,
        groups: GroupRegistry,
    ) -> None:
        self._session = session
        self._open = open
        self._backoff = backoff
        self._publisher = publisher
        self._subscriptions = subscriptions
        self._groups = groups
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()

    def check_usable(self) -> None:
        """Raise why no command can be sent now: the client ended, or never connected."""
        self._session.raise_if_failed()
        if not self._started:
            raise RuntimeError("call connect() first")

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the first session and start supervising it; see ``Client.connect``."""
        if self._closing:
            raise client_closed()
        if self._started:
            raise RuntimeError("connect() was already called")
        self._started = True
        try:
            await self._open()
        except LinkLost as exc:
            self._started = False
            raise ConnectionClosed(f"the connection closed during hello: {exc}") from None
        except BaseException:
            self._started = False
            raise
        if self._closing:  # close() ran while the session was being opened
            await self._session.drop_link()
            raise client_closed()
        self._task = asyncio.create_task(self._supervise(), name="agentcast-client")

    async def close(self) -> None:
        """Stop the supervisor task, close the link, end the client; see ``Client.close``."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    log.error("agentcast client supervisor failed", exc_info=task.exception())
            await self._session.drop_link()
        finally:
            self.terminate(client_closed(), graceful=True)
            self._closed.set()

    def terminate(self, error: ConnectionClosed, *, graceful: bool = False) -> None:
        """End the client: fail waiting publishes and subscriptions, wake every waiter."""
        session = self._session
        if session.failure is not None:
            return
        session.failure = error
        session.changed.set()
        self._publisher.fail_all(error)
        link = session.link
        if link is not None:
            link.lost()
        self._subscriptions.end_all(error, graceful=graceful)
        self._groups.end_all(error, graceful=graceful)

    # -- the supervisor task -----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Own the connection: keep it alive, notice its end, reconnect or fail the client."""
        session = self._session
        try:
            while True:
                link = session.link
                if link is None:
                    return
                await self._watch(link)
                code, reason = link.close_code(), link.close_reason()
                session.changed.clear()
                await session.close_link(link)
                if not session.settings.reconnect or not should_reconnect(code):
                    self.terminate(
                        ConnectionClosed(
                            f"the connection closed (code {code}{': ' + reason if reason else ''})",
                            close_code=code,
                        )
                    )
                    return
                if not await self._reconnect(code):
                    return
        except Exception as exc:
            log.exception("agentcast client supervisor failed")
            self.terminate(ConnectionClosed(f"the client failed: {exc!r}"))

    async def _watch(self, link: Link) -> None:
        """Wait for ``link`` to close; send a keepalive ``ping`` when it has been quiet.

        The node treats any inbound frame as liveness; a ``ping`` without ``id`` gets no
        success reply.
        """
        reader = link.reader
        assert reader is not None
        loop = asyncio.get_running_loop()
        while not reader.done():
            interval = link.heartbeat_interval
            wait = max(0.0, link.last_send + interval - loop.time())
            done, _ = await asyncio.wait({reader}, timeout=wait)
            if done:
                return
            if loop.time() - link.last_send >= interval:
                with contextlib.suppress(LinkLost):
                    await link.send({"cmd": "ping"})

    async def _reconnect(self, code: int | None) -> bool:
        """Try to reopen the session; ``False`` if the client ended instead."""
        settings = self._session.settings
        backoff = self._backoff
        backoff.reset()
        last_error: BaseException | None = None
        for attempt in range(1, settings.max_reconnect_attempts + 1):
            await asyncio.sleep(backoff.next_delay())
            try:
                await self._open()
            except ClientError as exc:
                if exc.code in _RETRYABLE_REFUSALS:
                    last_error = exc
                    log.info("agentcast client reconnect attempt %d refused: %s", attempt, exc)
                    continue
                self.terminate(
                    ConnectionClosed(
                        f"the node refused the session on reconnect: {exc.message} ({exc.code})",
                        close_code=code,
                    )
                )
                return False
            except _RETRYABLE as exc:
                last_error = exc
                log.info("agentcast client reconnect attempt %d failed: %r", attempt, exc)
                continue
            self.reconnects += 1
            log.info(
                "agentcast client reconnected to %s after %d attempt(s)", settings.url, attempt
            )
            return True
        self.terminate(
            ConnectionClosed(
                f"gave up reconnecting after {settings.max_reconnect_attempts} attempts: "
                f"{last_error!r}",
                close_code=code,
            )
        )
        return False
