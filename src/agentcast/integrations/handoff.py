"""A bounded, thread-safe hand-off from any thread to one asyncio event loop.

Framework callbacks often run on threads the application does not own (a framework's own
event loop thread, a thread pool, the thread that runs an agent). :class:`ThreadHandoff`
lets such a thread hand items to one consumer task on an asyncio loop without ever
waiting.

Contract:

* :meth:`ThreadHandoff.offer` may be called from any thread, including the loop's own. It
  never blocks beyond a short lock held for O(1) work: when the hand-off already holds
  ``maxsize`` items, or is closed, the item is dropped and counted in :attr:`dropped`.
* Items come out of :meth:`ThreadHandoff.take` in the order the offers took the lock (for
  offers from one thread, the order of the calls). There is one consumer.
* :attr:`accepted` counts every item ever queued; :attr:`dropped` every item refused.
  ``accepted + dropped`` is the number of offers.
* At most one wake-up is scheduled on the loop per transition from empty to non-empty, so
  a burst of offers costs one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ThreadHandoff(Generic[T]):
    """A FIFO of at most ``maxsize`` items, fed from any thread, drained on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._loop = loop
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_pending = False
        self._closed = False
        self.accepted = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every later offer is dropped)."""
        return self._closed

    def offer(self, item: T) -> bool:
        """Queue ``item`` if there is room; return whether it was queued. Never waits."""
        with self._lock:
            if self._closed or len(self._items) >= self.maxsize:
                self.dropped += 1
                return False
            self._items.append(item)
            self.accepted += 1
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            # The loop is closed: nobody will take the item any more.
            with self._lock:
                self._closed = True
        return True

    async def take(self) -> T:
        """Wait for the oldest item and remove it (the single consumer, on the loop)."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                self._wake_pending = False
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Refuse every later offer; items already queued can still be taken."""
        with self._lock:
            self._closed = True
