"""Switching a SQLite database to WAL when other processes may be opening it too."""

from __future__ import annotations

import sqlite3
import time

_BUSY = ("locked", "busy")


def enable_wal(conn: sqlite3.Connection, timeout: float = 5.0) -> str:
    """Set ``journal_mode = WAL`` on ``conn`` and return the mode SQLite reports.

    Changing the journal mode needs a lock that SQLite does not wait for (its busy handler
    is not called there), so while another connection opens or converts the same file the
    pragma fails with "database is locked" at once; this retries it with a short backoff
    for at most ``timeout`` seconds, then raises that error.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(mode)
        except sqlite3.OperationalError as exc:
            if not any(word in str(exc) for word in _BUSY) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
