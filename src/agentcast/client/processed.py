"""Records of the event ids an agent has processed: in memory, or in a SQLite file.

Both keep a bounded window: the last ``window`` ids recorded (oldest forgotten first). An id
older than the window is no longer recognised, so size the window above the number of events
a redelivery can repeat (a subscription replays at most what its node retains past the
agent's position).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW, IdWindow

_TABLE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class ProcessedIds(Protocol):
    """Where an :class:`~agentcast.client.idempotent.IdempotentHandler` remembers what it
    has processed.

    :meth:`record` makes an id permanent (as permanent as the store is) together with any
    work the handler did through the store's own transaction; :meth:`rollback` discards
    that work after a failed handler.
    """

    def __contains__(self, event_id: object) -> bool:
        """Whether ``event_id`` was recorded (within the window)."""

    def record(self, event_id: str) -> None:
        """Record ``event_id`` as processed and commit."""

    def rollback(self) -> None:
        """Discard uncommitted work (the handler failed)."""

    def close(self) -> None:
        """Release resources; idempotent."""


class MemoryProcessedIds:
    """Processed ids in memory: lost when the process ends."""

    def __init__(self, window: int = DEFAULT_DEDUPE_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._ids = IdWindow(window)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def record(self, event_id: str) -> None:
        self._ids.add(event_id)

    def rollback(self) -> None:
        """Nothing to discard."""

    def close(self) -> None:
        """Nothing to release."""


class SqliteProcessedIds:
    """Processed ids in a SQLite file (stdlib ``sqlite3``), so a restarted agent still skips
    what it already handled.

    :attr:`connection` is the file's connection. A handler that keeps its own state in the
    same file and writes it through this connection *without committing* gets that write
    and the id record committed in one transaction by :meth:`record` (and discarded by
    :meth:`rollback` if it fails): effect and record then survive or vanish together.

    ``synchronous="normal"`` (the default, WAL journal) survives a crash of the process;
    ``"full"`` also survives a power loss, at the cost of an fsync per record. Calls block
    the event loop for the duration of one small SQLite transaction. The table is
    ``table`` (created if missing); the file may hold other tables.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        window: int = DEFAULT_DEDUPE_WINDOW,
        table: str = "agentcast_processed",
        synchronous: str = "normal",
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not table or not set(table) <= _TABLE_NAME_CHARS or table[0].isdigit():
            raise ValueError(f"table name {table!r}: use lowercase letters, digits and '_'")
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = Path(path)
        self.window = window
        self._table = table
        self.connection = sqlite3.connect(self.path)
        try:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self.connection.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE)"
            )
            self.connection.commit()
        except BaseException:
            self.connection.close()
            raise
        self._closed = False

    def __len__(self) -> int:
        row = self.connection.execute(f"SELECT count(*) FROM {self._table}").fetchone()
        return int(row[0])

    def __contains__(self, event_id: object) -> bool:
        if not isinstance(event_id, str):
            return False
        row = self.connection.execute(
            f"SELECT 1 FROM {self._table} WHERE id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def record(self, event_id: str) -> None:
        """Insert ``event_id``, forget ids past the window, and commit (with whatever the
        handler wrote through :attr:`connection` since the last commit)."""
        connection = self.connection
        try:
            cursor = connection.execute(
                f"INSERT OR IGNORE INTO {self._table} (id) VALUES (?)", (event_id,)
            )
            newest = cursor.lastrowid
            if cursor.rowcount == 1 and newest is not None and newest > self.window:
                connection.execute(
                    f"DELETE FROM {self._table} WHERE n <= ?", (newest - self.window,)
                )
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def rollback(self) -> None:
        self.connection.rollback()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.connection.close()
