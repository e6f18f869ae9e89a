"""Group commit for durable publishes.

Publishes submitted while an append is in flight wait and go together in the next
:meth:`HistoryStore.append` call (one transaction). After each commit the log calls
``on_committed`` for every newly stored event in ``seq`` order (this is where the hub fans
out), then reports each publisher's outcome, in submission order. One append is in flight at
a time, so fan-out order is commit order is ``seq`` order, per topic.

A publisher hears back either through a future (:meth:`DurableLog.submit`) or through a
plain callback (:meth:`DurableLog.submit_callback`, the cheaper form the WebSocket path
uses: no future, no extra event-loop callback per publish). ``on_batch_done``, when given,
is called once after each batch's callbacks (also after a failed batch), so a callback may
gather work (the hub gathers each connection's acks into one write) for it to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial

from agentcast.errors import Overloaded, Unavailable
from agentcast.storage.base import AppendResult, EventDraft, HistoryStore, StoredEvent

log = logging.getLogger(__name__)

Outcome = AppendResult | Exception
"""What a durable publish ends with: the store's result, or the error that failed it."""

OnDone = Callable[[Outcome], None]
"""Told the outcome of one durable publish, exactly once, on the event loop's thread."""


def _settle(future: asyncio.Future[AppendResult], outcome: Outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class DurableLog:
    """Batches drafts into store appends; owns no task (run :meth:`run` in one)."""

    def __init__(
        self,
        store: HistoryStore,
        on_committed: Callable[[StoredEvent], None],
        *,
        max_batch: int = 2048,
        max_pending: int = 65536,
        on_batch_done: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.on_committed = on_committed
        self.on_batch_done = on_batch_done
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: deque[tuple[EventDraft, OnDone]] = deque()
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
        pending, self._pending = self._pending, deque()
        _fail_all(pending, "the node is shutting down")
        self._idle.set()

    def submit(self, draft: EventDraft) -> asyncio.Future[AppendResult]:
        """Queue ``draft`` for the next commit; the future resolves after its commit and
        fan-out (or fails with ``unavailable``). Raises :class:`Overloaded` when full and
        :class:`Unavailable` once closed."""
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.submit_callback(draft, partial(_settle, future))
        return future

    def submit_callback(self, draft: EventDraft, on_done: OnDone) -> None:
        """Queue ``draft`` for the next commit; ``on_done`` is called once, from the commit
        loop, with the :class:`AppendResult` after the commit and the batch's fan-out, or
        with an :class:`Unavailable` error if the append failed or the log closed. It must
        not raise (an exception is logged and ignored). Raises :class:`Overloaded` when full
        and :class:`Unavailable` once closed (``on_done`` is then never called)."""
        if self._closed:
            raise Unavailable("the node is shutting down")
        pending = self._pending
        if len(pending) >= self.max_pending:
            raise Overloaded(f"{self.max_pending} durable publishes are already pending")
        pending.append((draft, on_done))
        if not self._wakeup.is_set():  # set means the loop will look at the queue anyway
            self._idle.clear()
            self._wakeup.set()

    async def run(self) -> None:
        """Commit batches until cancelled."""
        while True:
            await self._wakeup.wait()
            while self._pending:
                await self._commit_one_batch()
            self._wakeup.clear()
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed or failed."""
        await self._idle.wait()

    async def _commit_one_batch(self) -> None:
        try:
            await self._append_one_batch()
        finally:
            if self.on_batch_done is not None:
                try:
                    self.on_batch_done()
                except Exception:
                    log.exception("durable batch hook failed")

    async def _append_one_batch(self) -> None:
        pending = self._pending
        size = min(len(pending), self.max_batch)
        popleft = pending.popleft
        batch = [popleft() for _ in range(size)]
        try:
            results = await self.store.append([draft for draft, _ in batch])
        except asyncio.CancelledError:
            _fail_all(batch, "the node is shutting down")
            raise
        except Exception as exc:
            self.failures += 1
            log.warning("history append of %d events failed: %s", size, exc)
            _fail_all(batch, f"history store failed: {exc}")
            return
        self.batches += 1
        on_committed = self.on_committed
        stored = 0
        for result in results:
            if result.duplicate:
                continue
            stored += 1
            try:
                on_committed(result.event)
            except Exception:  # the event is stored: its publisher still gets the ack
                log.exception("fan-out of %s#%d failed", result.event.topic, result.event.seq)
        self.appended += stored
        self.duplicates += size - stored
        for (_, on_done), result in zip(batch, results, strict=True):
            try:
                on_done(result)
            except Exception:
                log.exception("durable publish callback failed")


def _fail_all(batch: Iterable[tuple[EventDraft, OnDone]], reason: str) -> None:
    """Tell every publisher of ``batch`` it failed, each with its own ``unavailable`` error
    (an exception object is not shared: raising it again would grow its traceback)."""
    for _, on_done in batch:
        try:
            on_done(Unavailable(reason))
        except Exception:
            log.exception("durable publish callback failed")
