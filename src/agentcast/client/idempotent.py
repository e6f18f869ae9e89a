"""Effectively-once processing for agents: run a handler at most once per event id.

agentcast delivers durable topics **at least once**: after a reconnect, a node restart or an
agent restart, an event may come again (a subscription drops the duplicates it can see in
its own dedupe window, but a restarted agent starts with an empty one). An
:class:`IdempotentHandler` wraps an async handler and remembers, in a bounded window, the
envelope ids it has processed; an event whose id is remembered is skipped.

The contract, precisely:

* the handler runs for an id only if that id is not recorded; the id is recorded only
  **after** the handler returned, so a handler that raises (or a process that dies while it
  runs) is run again on the next delivery: processing is at-least-once, never lost;
* calls are serialised (one handler run at a time per :class:`IdempotentHandler`), so
  concurrent deliveries of the same id run it once;
* **at-least-once delivery + this = effectively-once processing** when either the handler's
  effect and the id record commit together (write the effect through
  :attr:`SqliteProcessedIds.connection <agentcast.client.processed.SqliteProcessedIds>`
  without committing: :meth:`~agentcast.client.processed.SqliteProcessedIds.record`
  commits both in one transaction, a failure rolls both back), or the effect is itself
  idempotent (keyed by the event id, e.g. a publish with ``idempotency_key=event.id``, an
  upsert). Otherwise a crash between the effect and the record repeats the effect once;
* ids older than the window are forgotten: size it above what a redelivery can repeat.

With ``path`` the ids live in a SQLite file (stdlib ``sqlite3``), so a restarted agent still
skips what it already handled; without, in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW
from agentcast.client.processed import MemoryProcessedIds, ProcessedIds, SqliteProcessedIds
from agentcast.protocol.envelope import Envelope

Handler = Callable[[Envelope], Awaitable[object]]


class IdempotentHandler:
    """``await handler(event)`` runs the wrapped handler unless ``event.id`` was already
    processed; returns ``True`` if it ran, ``False`` if it skipped the event. A handler
    exception propagates and the id stays unrecorded. See the module docstring for the
    contract.

    ``store`` overrides where ids are kept (``window`` and ``path`` then do not apply).
    Counters: :attr:`handled` and :attr:`skipped`. Use as a context manager, or call
    :meth:`close`, to close the SQLite file.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        window: int = DEFAULT_DEDUPE_WINDOW,
        path: str | Path | None = None,
        store: ProcessedIds | None = None,
    ) -> None:
        self.handler = handler
        if store is None:
            store = (
                MemoryProcessedIds(window)
                if path is None
                else SqliteProcessedIds(path, window=window)
            )
        self.store: ProcessedIds = store
        self.handled = 0
        self.skipped = 0
        self._lock = asyncio.Lock()

    def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` is recorded as processed."""
        return event_id in self.store

    async def __call__(self, event: Envelope) -> bool:
        async with self._lock:
            if event.id in self.store:
                self.skipped += 1
                return False
            try:
                await self.handler(event)
            except BaseException:
                self.store.rollback()
                raise
            self.store.record(event.id)
            self.handled += 1
            return True

    def close(self) -> None:
        """Close the store (the SQLite file); idempotent."""
        self.store.close()

    def __enter__(self) -> IdempotentHandler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def idempotent(
    *, window: int = DEFAULT_DEDUPE_WINDOW, path: str | Path | None = None
) -> Callable[[Handler], IdempotentHandler]:
    """Decorator form of :class:`IdempotentHandler`::

    @idempotent(path="planner-state.db")
    async def handle(event: Envelope) -> None:
        ...

    async for event in subscription:
        await handle(event)  # skipped if this event id was handled before
    """

    def wrap(handler: Handler) -> IdempotentHandler:
        return IdempotentHandler(handler, window=window, path=path)

    return wrap
