"""Consumer-group progress in the SQLite file that holds the history (own connection)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from agentcast.storage.consumers import GroupProgress
from agentcast.storage.sqlite_wal import enable_wal

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consumer_groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    epoch TEXT NOT NULL,
    floor INTEGER NOT NULL,
    done TEXT NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
"""


class SqliteConsumerStore:
    """:class:`~agentcast.storage.consumers.ConsumerStore` on SQLite (WAL, one thread).

    A :meth:`save` is one committed upsert; with ``synchronous=NORMAL`` it survives a
    process crash, as the history does.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="agentcast-groups")
        await self._call(self._open_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close_sync)
        self._executor.shutdown(wait=False)
        self._executor = None

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        return await self._call(self._load_sync, topic, group)

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        await self._call(self._save_sync, topic, group, progress)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("consumer store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        enable_wal(conn, self.busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _load_sync(self, topic: str, group: str) -> GroupProgress | None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT epoch, floor, done FROM consumer_groups WHERE topic = ? AND grp = ?",
            (topic, group),
        ).fetchone()
        if row is None:
            return None
        return GroupProgress(row[0], row[1], frozenset(orjson.loads(row[2])))

    def _save_sync(self, topic: str, group: str, progress: GroupProgress) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO consumer_groups (topic, grp, epoch, floor, done) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (topic, grp) DO UPDATE SET epoch = excluded.epoch,"
            " floor = excluded.floor, done = excluded.done",
            (
                topic,
                group,
                progress.epoch,
                progress.floor,
                orjson.dumps(sorted(progress.done)).decode(),
            ),
        )
