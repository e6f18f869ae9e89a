"""The consumer side that a subscription and a group membership share: a local buffer the
client's reader fills without blocking, drained by one consumer, and the way its end shows.

Contract: buffered items are handed out before the end is reported. After a requested end
(``unsubscribe()``, ``leave()``, ``Client.close()``) ``async for`` stops and :meth:`Feed.get`
raises the end reason; after a failure both raise the error. Every raise is a fresh copy of
the error (:func:`renew`), so each one gets its own traceback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Self, TypeVar

from agentcast.errors import ClientError, ConnectionClosed

EndError = ClientError | ConnectionClosed

T = TypeVar("T")


class Feed(Generic[T]):
    """A buffer of items for one consumer, with an end (see the module docstring).

    Subclasses fill it with :meth:`_push`, end it with :meth:`_finish` (once), and may
    override :meth:`_take` to skip buffered items that went stale.
    """

    def __init__(self) -> None:
        self._buffer: deque[T] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._error: EndError | None = None
        self._reason: EndError | None = None

    @property
    def active(self) -> bool:
        """Whether items are still being delivered (the subscription or membership has not
        ended)."""
        return not self._ended

    @property
    def pending(self) -> int:
        """How many received items (events, or group deliveries) wait in the local buffer."""
        return len(self._buffer)

    async def get(self) -> T:
        """The next item; waits for one. See the class docstring for how the end shows."""
        item = await self._next()
        if item is None:
            assert self._reason is not None  # set by _finish, the only way to end
            raise renew(self._reason)
        return item

    def get_nowait(self) -> T | None:
        """The next buffered item, or ``None`` when none is buffered (never waits; the end
        shows through :meth:`get`)."""
        return self._take()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        return item

    # -- for subclasses ------------------------------------------------------------------

    def _push(self, item: T) -> None:
        """Buffer ``item`` and wake the consumer; never blocks."""
        self._buffer.append(item)
        self._ready.set()

    def _finish(self, error: EndError | None, reason: EndError) -> None:
        """End the feed: a failure with ``error``, or a requested end with ``reason``."""
        self._ended = True
        self._error = error
        self._reason = reason
        self._ready.set()

    def _take(self) -> T | None:
        """The next buffered item to hand out, or ``None`` if there is none."""
        return self._buffer.popleft() if self._buffer else None

    async def _next(self) -> T | None:
        """The next item, ``None`` after a requested end; raises the failure of a failed one."""
        while True:
            item = self._take()
            if item is not None:
                return item
            if self._ended:
                if self._error is not None:
                    raise renew(self._error)
                return None
            self._ready.clear()
            await self._ready.wait()


def renew(error: EndError) -> EndError:
    """A fresh copy of ``error``, so each raise gets its own traceback."""
    if isinstance(error, ConnectionClosed):
        return ConnectionClosed(error.message, close_code=error.close_code)
    return ClientError(error.message, code=error.code)
