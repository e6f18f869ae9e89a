"""The embedded durable :class:`~agentcast.storage.base.HistoryStore`, on SQLite.

One file, no server: the default for a single node. Every call runs on one dedicated thread
that owns the only connection, so calls are applied in the order they are made and never
contend with each other inside the process.

``events`` has one index, its primary key ``(topic, seq)``: every append pays for each
index, and a second one on ``(topic, time_us)`` cost more than a third of the insert. Reads
by time (``read_since_time``, retention by age) walk the topic's events in ``seq`` order
through the primary key and stop at the ``limit``-th match, so they cost at most one pass
over the topic's retained events; files made before keep working (the old index is dropped
when they are opened).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros
from agentcast.storage.sqlite_wal import enable_wal

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
_SYNCHRONOUS: Final = {"normal": "NORMAL", "full": "FULL"}
_PURGE_INTERVAL: Final = 1.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    time TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    source TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    lamport INTEGER NOT NULL,
    PRIMARY KEY (topic, seq)
);
DROP INDEX IF EXISTS events_topic_time;
CREATE TABLE IF NOT EXISTS idempotency (
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (topic, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires_at);
"""

_EVENT_COLUMNS: Final = (
    "seq, id, time, source, payload, headers, correlation_id, causation_id, lamport"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (topic, seq, id, time, time_us, source, payload, headers,"
    " correlation_id, causation_id, lamport) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_KEY: Final = (
    "INSERT INTO idempotency (topic, key, seq, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (topic, key) DO UPDATE SET seq = excluded.seq, expires_at = excluded.expires_at"
)


class _EventTimes:
    """:func:`rfc3339_micros` for a batch of event times, fast for the node's own format.

    Times made by the node (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) of one batch mostly share their
    second: the value of the last second parsed is kept, and a time of that second only has
    its six fraction digits read. Anything else is parsed in full (and may raise
    ``ValueError``). Used by one thread only.
    """

    __slots__ = ("base", "prefix")

    def __init__(self) -> None:
        self.prefix = ""
        self.base = 0

    def __call__(self, value: str) -> int:
        if len(value) == 27 and value[26] == "Z" and value[19] == ".":
            digits = value[20:26]
            if digits.isascii() and digits.isdigit():
                if value[:19] == self.prefix:
                    return self.base + int(digits)
                micros = rfc3339_micros(value)
                self.prefix = value[:19]
                self.base = micros - int(digits)
                return micros
        return rfc3339_micros(value)


def _event(topic: str, epoch: str, row: Sequence[Any]) -> StoredEvent:
    """A stored event from a row selected as ``_EVENT_COLUMNS``."""
    seq, id_, time_, source, payload, headers, correlation_id, causation_id, lamport = row
    return StoredEvent(
        id_,
        topic,
        epoch,
        seq,
        time_,
        source,
        bytes(payload),
        orjson.loads(headers),
        correlation_id,
        causation_id,
        lamport,
    )


class SqliteHistoryStore:
    """History in one SQLite file (WAL journal), written by one thread.

    Durability of an acknowledged :meth:`append` (one ``BEGIN IMMEDIATE ... COMMIT``
    transaction per call) depends on ``synchronous``:

    * ``"normal"`` (default): in WAL mode a commit is written to the WAL file before
      ``append`` returns but not fsynced. It survives the process crashing or being killed
      (``kill -9``), because the data is in the operating system's page cache; it may lose
      the most recent commits (never corrupt the database or reorder events) if the machine
      loses power or the kernel crashes before the WAL is checkpointed or synced.
    * ``"full"``: the WAL is fsynced at every commit, so an acknowledged append also survives
      power loss and kernel crashes, at the price of one fsync per ``append`` call.

    Idempotency keys are scoped per topic and kept ``dedupe_window`` seconds of ``clock``
    (wall time by default, since keys outlive restarts); expired keys are deleted lazily, at
    most once per second, inside an append. A duplicate returns the original event; if that
    event was trimmed meanwhile, the result carries the original position with the
    duplicate draft's content.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dedupe_window: float = 120.0,
        synchronous: str = "normal",
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = Path(path)
        self.dedupe_window = dedupe_window
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._next_purge = 0.0
        self._event_times = _EventTimes()  # used only on the executor's thread

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError("store is already open")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="agentcast-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await self._call(self._close_sync)  # queued after every pending call
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    # -- HistoryStore ----------------------------------------------------------------------

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        if not drafts:
            return []
        return await self._call(self._append_sync, list(drafts))

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        if limit <= 0:
            return []
        return await self._call(
            self._select,
            topic,
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
            (topic, after_seq, limit),
        )

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        if count <= 0:
            return []
        events = await self._call(
            self._select,
            topic,
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE topic = ? ORDER BY seq DESC LIMIT ?",
            (topic, count),
        )
        events.reverse()
        return events

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        since = rfc3339_micros(time)
        if limit <= 0:
            return []
        return await self._call(
            self._select,
            topic,
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE topic = ? AND time_us >= ?"
            " ORDER BY seq LIMIT ?",
            (topic, since, limit),
        )

    async def position(self, topic: str) -> TopicPosition | None:
        return await self._call(self._position_sync, topic)

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        retention_cutoff(0, keep_last)  # validates keep_last
        limit = None if older_than is None else rfc3339_micros(older_than)
        return await self._call(self._trim_sync, topic, keep_last, limit)

    async def topics(self) -> list[str]:
        rows = await self._call(self._fetchall, "SELECT topic FROM topics ORDER BY topic", ())
        return [row[0] for row in rows]

    async def reset(self, topic: str) -> str:
        return await self._call(self._reset_sync, topic)

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is closed")
        return self._conn

    def _open_sync(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = enable_wal(conn, self.busy_timeout)
            if str(mode).lower() != "wal" and str(self.path) != ":memory:":
                raise RuntimeError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.synchronous]}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path}: history schema version {version} is newer than this"
                        f" agentcast supports ({SCHEMA_VERSION})"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._db().execute(sql, params).fetchall()

    def _select(self, topic: str, sql: str, params: Sequence[Any]) -> list[StoredEvent]:
        db = self._db()
        row = db.execute("SELECT epoch FROM topics WHERE topic = ?", (topic,)).fetchone()
        if row is None:
            return []
        return [_event(topic, row[0], r) for r in db.execute(sql, params)]

    def _position_sync(self, topic: str) -> TopicPosition | None:
        db = self._db()
        row = db.execute(
            "SELECT epoch, last_seq,"
            " (SELECT MIN(seq) FROM events WHERE events.topic = topics.topic)"
            " FROM topics WHERE topic = ?",
            (topic,),
        ).fetchone()
        if row is None:
            return None
        epoch, last_seq, first_seq = row
        return TopicPosition(epoch, last_seq, last_seq + 1 if first_seq is None else first_seq)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _append_sync(self, drafts: list[EventDraft]) -> list[AppendResult]:
        micros = self._event_times
        times = [micros(draft.time) for draft in drafts]  # may raise: nothing stored
        now = self._clock()
        return self._transaction(lambda db: self._append_tx(db, drafts, times, now))

    def _append_tx(
        self, db: sqlite3.Connection, drafts: list[EventDraft], times: list[int], now: float
    ) -> list[AppendResult]:
        if now >= self._next_purge:
            db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            self._next_purge = now + _PURGE_INTERVAL
        streams: dict[str, list[Any]] = {}  # topic -> [epoch, last_seq]
        for topic in {draft.topic: None for draft in drafts}:
            row = db.execute(
                "SELECT epoch, last_seq FROM topics WHERE topic = ?", (topic,)
            ).fetchone()
            if row is None:
                row = (new_epoch(), 0)
                db.execute(
                    "INSERT INTO topics (topic, epoch, last_seq) VALUES (?, ?, 0)", (topic, row[0])
                )
            streams[topic] = list(row)
        expires_at = now + self.dedupe_window
        seen: dict[tuple[str, str], StoredEvent] = {}
        results: list[AppendResult] = []
        event_rows: list[tuple[Any, ...]] = []
        key_rows: list[tuple[Any, ...]] = []
        add_result = results.append
        add_row = event_rows.append
        dumps = orjson.dumps
        for draft, micros in zip(drafts, times, strict=True):
            topic = draft.topic
            stream = streams[topic]
            key = None if draft.idempotency_key is None else (topic, draft.idempotency_key)
            if key is not None:
                original = seen.get(key)
                if original is None:
                    original = self._stored_duplicate(db, draft, stream[0], now)
                if original is not None:
                    seen[key] = original
                    add_result(AppendResult(original, True))
                    continue
            seq = stream[1] = stream[1] + 1
            headers = draft.headers
            event = StoredEvent(
                draft.id,
                topic,
                stream[0],
                seq,
                draft.time,
                draft.source,
                draft.payload,
                headers,
                draft.correlation_id,
                draft.causation_id,
                draft.lamport,
            )
            add_row(
                (
                    topic,
                    seq,
                    event.id,
                    event.time,
                    micros,
                    event.source,
                    event.payload,
                    dumps(headers).decode() if headers else "{}",
                    event.correlation_id,
                    event.causation_id,
                    event.lamport,
                )
            )
            if key is not None:
                seen[key] = event
                key_rows.append((topic, key[1], seq, expires_at))
            add_result(AppendResult(event))
        db.executemany(_INSERT_EVENT, event_rows)
        if key_rows:
            db.executemany(_UPSERT_KEY, key_rows)
        db.executemany(
            "UPDATE topics SET last_seq = ? WHERE topic = ?",
            [(last_seq, topic) for topic, (_, last_seq) in streams.items()],
        )
        return results

    def _stored_duplicate(
        self, db: sqlite3.Connection, draft: EventDraft, epoch: str, now: float
    ) -> StoredEvent | None:
        """The event a live stored key points at, or ``None`` if the key is new or expired."""
        row = db.execute(
            "SELECT seq FROM idempotency WHERE topic = ? AND key = ? AND expires_at > ?",
            (draft.topic, draft.idempotency_key, now),
        ).fetchone()
        if row is None:
            return None
        found = db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE topic = ? AND seq = ?",
            (draft.topic, row[0]),
        ).fetchone()
        if found is None:  # trimmed since: the position is all that is left
            return StoredEvent.from_draft(draft, epoch, row[0])
        return _event(draft.topic, epoch, found)

    def _trim_sync(self, topic: str, keep_last: int, older_than_us: int | None) -> int:
        def trim(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT last_seq FROM topics WHERE topic = ?", (topic,)).fetchone()
            if row is None:
                return 0
            last_seq = row[0]
            first_new_seq = None
            if older_than_us is not None:
                found = db.execute(
                    "SELECT seq FROM events WHERE topic = ? AND time_us >= ? ORDER BY seq LIMIT 1",
                    (topic, older_than_us),
                ).fetchone()
                first_new_seq = last_seq + 1 if found is None else found[0]
            cutoff = retention_cutoff(last_seq, keep_last, first_new_seq)
            return db.execute(
                "DELETE FROM events WHERE topic = ? AND seq < ?", (topic, cutoff)
            ).rowcount

        return self._transaction(trim)

    def _reset_sync(self, topic: str) -> str:
        def reset(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT epoch FROM topics WHERE topic = ?", (topic,)).fetchone()
            epoch = new_epoch(None if row is None else row[0])
            db.execute(
                "INSERT INTO topics (topic, epoch, last_seq) VALUES (?, ?, 0)"
                " ON CONFLICT (topic) DO UPDATE SET epoch = excluded.epoch, last_seq = 0",
                (topic, epoch),
            )
            db.execute("DELETE FROM events WHERE topic = ?", (topic,))
            db.execute("DELETE FROM idempotency WHERE topic = ?", (topic,))
            return epoch

        return self._transaction(reset)
