"""One WebSocket connection of a client: its socket, reader task and unanswered commands."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WebSocketClosed

log = logging.getLogger("agentcast.client")

DEFAULT_HEARTBEAT_INTERVAL = 25.0

MessageHandler = Callable[["Link", "str | bytes"], None]


class LinkLost(Exception):
    """The connection a command was sent on closed before its reply came."""


@dataclass(slots=True)
class ReplyWaiter:
    """A command waiting for its reply.

    ``resend`` marks a publish the client resends itself after a reconnect; losing the link
    leaves its future pending instead of failing it with :class:`LinkLost`.
    """

    future: asyncio.Future[Any]
    resend: bool = False


class Link:
    """A single connection: sending, the reader loop and reply bookkeeping.

    Command ids come from the client's counter (increasing and unique across links), and a
    reply can only resolve a command sent on its own link. When the socket closes, :meth:`read`
    marks the link lost and fails every waiting non-resend command with :class:`LinkLost`.
    """

    def __init__(self, ws: ClientConnection, generation: int, ids: Iterator[int]) -> None:
        self.ws = ws
        self.ids = ids
        self.generation = generation
        self.reader: asyncio.Task[None] | None = None
        self.replies: dict[int, ReplyWaiter] = {}
        self.alive = True
        self.ready = False
        self.heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL
        self.connection_id: str | None = None
        self.node_id: str | None = None
        self.last_send = asyncio.get_running_loop().time()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one command; raise :class:`LinkLost` if the connection is closed or closing.

        The frame is handed to the socket before the first suspension point, so commands
        sent one after the other by one task leave in that order.
        """
        if not self.alive:
            raise LinkLost("the connection is closed")
        try:
            await self.ws.send(orjson.dumps(message).decode())
        except WebSocketClosed:
            raise LinkLost("the connection is closed") from None
        self.last_send = asyncio.get_running_loop().time()

    async def request(self, command: dict[str, Any], deadline: float) -> Any:
        """Send ``command`` with a new id and return its reply's ``result``.

        Raises :class:`~agentcast.errors.ClientError` for an error reply, :class:`TimeoutError`
        at ``deadline`` (loop time) and :class:`LinkLost` if the link closed first.
        """
        command_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies[command_id] = ReplyWaiter(future)
        try:
            await self.send({**command, "id": command_id})
            async with asyncio.timeout_at(deadline):
                return await future
        finally:
            self.replies.pop(command_id, None)
            if not future.done():
                future.cancel()

    async def send_resendable(self, command: dict[str, Any], future: asyncio.Future[Any]) -> None:
        """Send ``command`` with a new id; its reply resolves ``future``, which the link never
        fails (the caller resends the command on the next link instead)."""
        command_id = next(self.ids)
        self.replies[command_id] = ReplyWaiter(future, resend=True)
        await self.send({**command, "id": command_id})

    def take(self, command_id: Any) -> ReplyWaiter | None:
        """The waiter for a reply's ``id``, removed from the table (``None`` if unknown)."""
        if isinstance(command_id, bool) or not isinstance(command_id, int):
            return None
        return self.replies.pop(command_id, None)

    async def read(self, handle: MessageHandler) -> None:
        """The reader loop: hand every message to ``handle`` until the socket closes.

        ``handle`` must not block or raise; a failure in it is logged and reading goes on.
        """
        try:
            async for message in self.ws:
                try:
                    handle(self, message)
                except Exception:
                    log.exception("agentcast client failed to handle a server message")
        except WebSocketClosed:
            pass
        finally:
            self.lost()

    def lost(self) -> None:
        """Mark the link closed and fail every waiting command that is not resent."""
        self.alive = False
        self.ready = False
        replies, self.replies = self.replies, {}
        for waiter in replies.values():
            if not waiter.resend and not waiter.future.done():
                waiter.future.set_exception(LinkLost("the connection closed before the reply"))

    def close_code(self) -> int | None:
        """The close code the server sent, or ``None`` if no close frame arrived."""
        received = self.ws.protocol.close_rcvd
        return None if received is None else received.code

    def close_reason(self) -> str:
        """The close reason the server sent ('' if none)."""
        received = self.ws.protocol.close_rcvd
        return "" if received is None else received.reason

    async def shutdown(self) -> None:
        """Close the socket (normal closure) and wait for the reader to finish."""
        self.alive = False
        self.ready = False
        await self.ws.close()
        reader = self.reader
        if reader is not None:
            if not reader.done():
                reader.cancel()
            await asyncio.wait({reader})
            if not reader.cancelled() and reader.exception() is not None:
                log.error("agentcast client reader failed", exc_info=reader.exception())
        self.lost()
