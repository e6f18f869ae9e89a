"""Group commit for durable publishes.

Publishes submitted while an append is in flight wait and go together in the next
:meth:`HistoryStore.append` call (one transaction). After each commit the log calls
``on_committed`` for every newly stored event in ``seq`` order (this is where the hub fans
out), then resolves each publisher's future. One append is in flight at a time, so fan-out
order is commit order is ``seq`` order, per topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from agentcast.errors import Overloaded, Unavailable
from agentcast.storage.base import AppendResult, EventDraft, HistoryStore, StoredEvent

log = logging.getLogger(__name__)


class DurableLog:
    """Batches drafts into store appends; owns no task (run :meth:`run` in one)."""

    def __init__(
        self,
        store: HistoryStore,
        on_committed: Callable[[StoredEvent], None],
        *,
        max_batch: int = 2048,
        max_pending: int = 65536,
    ) -> None:
        self.store = store
        self.on_committed = on_committed
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: deque[tuple[EventDraft, asyncio.Future[AppendResult]]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.batches = 0
        self.appended = 0
        self.duplicates = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Refuse new submissions and fail what is still waiting with ``unavailable``
        (shutdown, after :meth:`drain` had its chance)."""
        self._closed = True
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(Unavailable("the node is shutting down"))
        self._idle.set()

    def submit(self, draft: EventDraft) -> asyncio.Future[AppendResult]:
        """Queue ``draft`` for the next commit; raises :class:`Overloaded` when full and
        :class:`Unavailable` once closed."""
        if self._closed:
            raise Unavailable("the node is shutting down")
        if len(self._pending) >= self.max_pending:
            raise Overloaded(f"{self.max_pending} durable publishes are already pending")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((draft, future))
        self._idle.clear()
        self._wakeup.set()
        return future

    async def run(self) -> None:
        """Commit batches until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._commit_one_batch()
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed or failed."""
        await self._idle.wait()

    async def _commit_one_batch(self) -> None:
        size = min(len(self._pending), self.max_batch)
        batch = [self._pending.popleft() for _ in range(size)]
        try:
            results = await self.store.append([draft for draft, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable("the node is shutting down"))
            raise
        except Exception as exc:
            self.failures += 1
            log.warning("history append of %d events failed: %s", size, exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(f"history store failed: {exc}"))
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if result.duplicate:
                self.duplicates += 1
            else:
                self.appended += 1
                try:
                    self.on_committed(result.event)
                except Exception:  # the event is stored: its publisher still gets the ack
                    log.exception("fan-out of %s#%d failed", result.event.topic, result.event.seq)
            if not future.done():
                future.set_result(result)
