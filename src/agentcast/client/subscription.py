"""A client-side subscription: a bounded local buffer of events and its async iterator."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from agentcast.errors import ClientError, ConnectionClosed
from agentcast.protocol.envelope import Envelope

DEFAULT_BUFFER_SIZE = 10_000

EndError = ClientError | ConnectionClosed


class SubscriptionOwner(Protocol):
    """What a :class:`Subscription` needs from the client that created it."""

    async def _release(self, subscription: Subscription) -> None:
        """Forget ``subscription`` and tell the node when no other local one needs it."""


class Subscription:
    """Events of one topic pattern, delivered in the order the connection received them.

    The client's reader appends every event whose topic matches :attr:`pattern` to a local
    buffer of at most ``buffer_size`` events and never waits for the consumer: when the
    buffer is full the oldest event is dropped and counted in :attr:`dropped`.

    Consume with ``async for event in sub`` or ``await sub.get()``. Buffered events are always
    handed out before the end is reported. The end comes as:

    * :meth:`unsubscribe` or ``Client.close()``: ``async for`` stops; :meth:`get` raises
      :class:`~agentcast.errors.ClientError` (code ``not_subscribed``) or
      :class:`~agentcast.errors.ConnectionClosed` (close code 1000) respectively;
    * the connection closed for good (a close code that forbids reconnecting, or reconnecting
      gave up): both raise :class:`~agentcast.errors.ConnectionClosed` with the close code;
    * the node refused the subscription when it was renewed after a reconnect: both raise
      that :class:`~agentcast.errors.ClientError`.
    """

    def __init__(
        self,
        owner: SubscriptionOwner,
        pattern: str,
        *,
        policy: str | None = None,
        key_header: str = "key",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.pattern = pattern
        self.policy = policy
        self.key_header = key_header
        self.buffer_size = buffer_size
        self.dropped = 0
        self.confirmed = False
        self._owner = owner
        self._buffer: deque[Envelope] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._error: EndError | None = None
        self._reason: EndError | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether events are still being delivered to this subscription."""
        return not self._ended

    @property
    def pending(self) -> int:
        """How many received events wait in the local buffer."""
        return len(self._buffer)

    def command(self) -> dict[str, Any]:
        """The ``subscribe`` command (without ``id``) that (re)creates this subscription."""
        command: dict[str, Any] = {
            "cmd": "subscribe",
            "topic": self.pattern,
            "key_header": self.key_header,
        }
        if self.policy is not None:
            command["policy"] = self.policy
        return command

    # -- called by the client ------------------------------------------------------------

    def deliver(self, event: Envelope) -> None:
        """Buffer ``event`` without blocking; drop the oldest one when the buffer is full."""
        if self._ended:
            return
        buffer = self._buffer
        if len(buffer) >= self.buffer_size:
            buffer.popleft()
            self.dropped += 1
        buffer.append(event)
        self._ready.set()

    def end(self, error: EndError | None = None, *, reason: EndError | None = None) -> None:
        """Stop delivery; the consumer still gets the buffered events first.

        With ``error`` both ``async for`` and :meth:`get` raise it (a failure). Without,
        ``async for`` stops and :meth:`get` raises ``reason`` (a requested end).
        """
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._reason = reason or unsubscribed(self.pattern)
        self._ready.set()

    # -- consumer API ----------------------------------------------------------------------

    async def get(self) -> Envelope:
        """The next event; waits for one. See the class docstring for how the end shows."""
        event = await self._next()
        if event is None:
            raise renew(self._reason or unsubscribed(self.pattern))
        return event

    def get_nowait(self) -> Envelope | None:
        """The next buffered event, or ``None`` if the buffer is empty (the end is not raised)."""
        return self._buffer.popleft() if self._buffer else None

    async def unsubscribe(self) -> None:
        """End this subscription and tell the node, unless another local subscription of the
        same client holds the same pattern. Idempotent; buffered events can still be read."""
        await self._owner._release(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        event = await self._next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def _next(self) -> Envelope | None:
        """The next event, ``None`` after a requested end; raises the failure of a failed one."""
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._ended:
                if self._error is not None:
                    raise renew(self._error)
                return None
            self._ready.clear()
            await self._ready.wait()

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Subscription {self.pattern!r} {state} pending={self.pending}>"


def renew(error: EndError) -> EndError:
    """A fresh copy of ``error``, so each raise gets its own traceback."""
    if isinstance(error, ConnectionClosed):
        return ConnectionClosed(error.message, close_code=error.close_code)
    return ClientError(error.message, code=error.code)


def unsubscribed(pattern: str) -> ClientError:
    """The end reason of a subscription ended by ``unsubscribe()``."""
    return ClientError(f"unsubscribed from {pattern!r}", code="not_subscribed")


def client_closed() -> ConnectionClosed:
    """The end reason of everything pending when ``Client.close()`` ran."""
    return ConnectionClosed("the client was closed", close_code=1000)
