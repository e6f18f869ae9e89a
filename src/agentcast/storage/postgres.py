"""A :class:`~agentcast.storage.base.HistoryStore` on PostgreSQL, shared by a cluster.

Every node of a cluster opens the same database and schema. Positions are assigned inside
the append transaction while it holds the topic's row lock, so nodes appending to one topic
at the same time still produce one gapless, unique sequence.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PURGE_INTERVAL: Final = 1.0
_PURGE_BATCH: Final = 10_000
_EVENT_COLUMNS: Final = (
    'e.seq, e.id, e."time", e.source, e.payload, e.headers,'
    " e.correlation_id, e.causation_id, e.lamport"
)
_EVENT_ARRAYS: Final = (
    "$1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[],"
    " $7::bytea[], $8::json[], $9::text[], $10::text[], $11::bigint[]"
)


def _event(topic: str, epoch: str, row: Any) -> StoredEvent:
    """A stored event from a record selected as ``_EVENT_COLUMNS``."""
    return StoredEvent(
        row["id"],
        topic,
        epoch,
        row["seq"],
        row["time"],
        row["source"],
        bytes(row["payload"]),
        orjson.loads(row["headers"]),
        row["correlation_id"],
        row["causation_id"],
        row["lamport"],
    )


class _Sql:
    """Every statement of the store, with the schema name filled in once."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.create = f"""
            CREATE SCHEMA IF NOT EXISTS {s};
            CREATE TABLE IF NOT EXISTS {s}.topics (
                topic text PRIMARY KEY,
                epoch text NOT NULL,
                last_seq bigint NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {s}.events (
                topic text NOT NULL,
                seq bigint NOT NULL,
                id text NOT NULL,
                "time" text NOT NULL,
                time_us bigint NOT NULL,
                source text NOT NULL,
                payload bytea NOT NULL,
                headers json NOT NULL,
                correlation_id text,
                causation_id text,
                lamport bigint NOT NULL,
                PRIMARY KEY (topic, seq)
            );
            CREATE INDEX IF NOT EXISTS events_topic_time ON {s}.events (topic, time_us);
            CREATE TABLE IF NOT EXISTS {s}.idempotency (
                topic text NOT NULL,
                key text NOT NULL,
                seq bigint NOT NULL,
                expires_at double precision NOT NULL,
                PRIMARY KEY (topic, key)
            );
            CREATE INDEX IF NOT EXISTS idempotency_expires ON {s}.idempotency (expires_at);
        """
        # Creates unknown topics and row-locks every topic of the batch, in topic order (the
        # same order in every transaction, so two batches never deadlock), adding the number
        # of new events to last_seq; returns the new last_seq.
        self.lock_topics = f"""
            INSERT INTO {s}.topics AS t (topic, epoch, last_seq)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u ORDER BY 1
            ON CONFLICT (topic) DO UPDATE SET last_seq = t.last_seq + excluded.last_seq
            RETURNING topic, epoch, last_seq
        """
        self.insert_events = f"""
            INSERT INTO {s}.events (topic, seq, id, "time", time_us, source, payload, headers,
                                    correlation_id, causation_id, lamport)
            SELECT * FROM unnest({_EVENT_ARRAYS})
        """
        self.find_keys = f"""
            SELECT k.topic, k.key, k.seq AS key_seq, {_EVENT_COLUMNS}
            FROM {s}.idempotency k
            JOIN unnest($1::text[], $2::text[]) AS u (topic, key)
                ON k.topic = u.topic AND k.key = u.key
            LEFT JOIN {s}.events e ON e.topic = k.topic AND e.seq = k.seq
            WHERE k.expires_at > $3
        """
        self.write_keyed = f"""
            WITH last AS (
                UPDATE {s}.topics AS t SET last_seq = u.last_seq
                FROM unnest($12::text[], $13::bigint[]) AS u (topic, last_seq)
                WHERE t.topic = u.topic
            ), ev AS (
                INSERT INTO {s}.events (topic, seq, id, "time", time_us, source, payload,
                                        headers, correlation_id, causation_id, lamport)
                SELECT * FROM unnest({_EVENT_ARRAYS})
            )
            INSERT INTO {s}.idempotency AS k (topic, key, seq, expires_at)
            SELECT * FROM unnest($14::text[], $15::text[], $16::bigint[], $17::float8[])
            ON CONFLICT (topic, key)
            DO UPDATE SET seq = excluded.seq, expires_at = excluded.expires_at
        """
        # SKIP LOCKED: the purge never waits for an appender, so it cannot deadlock with one.
        self.purge = f"""
            DELETE FROM {s}.idempotency WHERE (topic, key) IN (
                SELECT topic, key FROM {s}.idempotency WHERE expires_at <= $1
                LIMIT {_PURGE_BATCH} FOR UPDATE SKIP LOCKED)
        """
        self.read = f"""
            SELECT t.epoch, {_EVENT_COLUMNS}
            FROM {s}.events e JOIN {s}.topics t ON t.topic = e.topic
            WHERE e.topic = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3
        """
        self.read_last = f"""
            SELECT * FROM (
                SELECT t.epoch, {_EVENT_COLUMNS}
                FROM {s}.events e JOIN {s}.topics t ON t.topic = e.topic
                WHERE e.topic = $1 ORDER BY e.seq DESC LIMIT $2
            ) AS last ORDER BY seq
        """
        self.read_since_time = f"""
            SELECT t.epoch, {_EVENT_COLUMNS}
            FROM {s}.events e JOIN {s}.topics t ON t.topic = e.topic
            WHERE e.topic = $1 AND e.time_us >= $2 ORDER BY e.seq LIMIT $3
        """
        self.position = f"""
            SELECT t.epoch, t.last_seq,
                   (SELECT min(e.seq) FROM {s}.events e WHERE e.topic = t.topic) AS first_seq
            FROM {s}.topics t WHERE t.topic = $1
        """
        self.trim_bounds = f"""
            SELECT t.last_seq,
                   (SELECT e.seq FROM {s}.events e WHERE e.topic = t.topic AND e.time_us >= $2
                    ORDER BY e.seq LIMIT 1) AS first_new_seq
            FROM {s}.topics t WHERE t.topic = $1
        """
        self.delete_before = f"DELETE FROM {s}.events WHERE topic = $1 AND seq < $2"
        self.topics = f"SELECT topic FROM {s}.topics ORDER BY topic"
        self.lock_topic = f"SELECT epoch FROM {s}.topics WHERE topic = $1 FOR UPDATE"
        self.reset_topic = f"""
            INSERT INTO {s}.topics (topic, epoch, last_seq) VALUES ($1, $2, 0)
            ON CONFLICT (topic) DO UPDATE SET epoch = excluded.epoch, last_seq = 0
        """
        self.reset_events = f"DELETE FROM {s}.events WHERE topic = $1"
        self.reset_keys = f"DELETE FROM {s}.idempotency WHERE topic = $1"


def _event_arrays(events: Sequence[StoredEvent], times: Sequence[int]) -> list[list[Any]]:
    """The eleven column arrays of ``insert_events`` (``$1`` to ``$11``)."""
    return [
        [e.topic for e in events],
        [e.seq for e in events],
        [e.id for e in events],
        [e.time for e in events],
        list(times),
        [e.source for e in events],
        [e.payload for e in events],
        [orjson.dumps(e.headers).decode() for e in events],
        [e.correlation_id for e in events],
        [e.causation_id for e in events],
        [e.lamport for e in events],
    ]


@dataclass(slots=True)
class _LockTurn:
    """One append's place in the per-topic queue: ``future`` is done once it holds its row
    locks (or gave up); calls queued behind it wait for that, not for its commit."""

    future: asyncio.Future[None]
    previous: list[asyncio.Future[None]]

    def release(self) -> None:
        """Let the next calls go once every earlier call has had its turn."""
        future = self.future
        if future.done():
            return
        pending = [f for f in self.previous if not f.done()]
        if not pending:
            future.set_result(None)
            return

        def done(_: object) -> None:
            if not future.done():
                future.set_result(None)

        asyncio.gather(*pending).add_done_callback(done)


class PostgresHistoryStore:
    """History in PostgreSQL tables under ``schema``, through an asyncpg pool.

    Each :meth:`append` is one transaction, durable when PostgreSQL commits it (per the
    server's ``synchronous_commit``). It locks the batch's topic rows in sorted order, so
    concurrent appenders on any number of nodes serialise per topic without deadlocks, and
    a batch of any size takes a fixed number of round trips (four, five with idempotency
    keys). Within one store instance, appends touching a topic reach its lock in call order.

    Idempotency keys are scoped per topic and kept ``dedupe_window`` seconds of ``clock``
    (wall time: every node must have a roughly synchronised clock); expired keys are
    deleted lazily, at most once per second per node. A duplicate returns the original
    event; if that event was trimmed meanwhile, the result carries the original position
    with the duplicate draft's content.
    """

    def __init__(
        self,
        dsn: str,
        dedupe_window: float = 120.0,
        schema: str = "agentcast",
        *,
        clock: Callable[[], float] = time.time,
        min_connections: int = 1,
        max_connections: int = 10,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema {schema!r} must be a lowercase SQL identifier ([a-z_][a-z0-9_]*)"
            )
        self.dsn = dsn
        self.schema = schema
        self.dedupe_window = dedupe_window
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._clock = clock
        self._sql = _Sql(schema)
        self._pool: Any = None
        self._next_purge = 0.0
        # topic -> future done once the latest append on it holds the topic's row lock
        self._lock_tail: dict[str, asyncio.Future[None]] = {}
        self._appending = 0
        self._appends_done = asyncio.Event()
        self._appends_done.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("store is already open")
        pool = await asyncpg.create_pool(
            self.dsn, min_size=self.min_connections, max_size=self.max_connections
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Nodes starting together must not race on CREATE ... IF NOT EXISTS.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"agentcast:{self.schema}"
                )
                await conn.execute(self._sql.create)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._appends_done.wait()  # appends already called still commit
            await pool.close()  # waits for reads still using a connection

    # -- HistoryStore ----------------------------------------------------------------------

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        if not drafts:
            return []
        pool = self._open_pool()
        drafts = list(drafts)
        times = [rfc3339_micros(draft.time) for draft in drafts]  # may raise: nothing stored
        topics = sorted({draft.topic for draft in drafts})
        locked = self._queue_for_locks(topics)
        previous = locked.previous
        self._appending += 1
        self._appends_done.clear()
        try:
            if previous:
                await asyncio.shield(asyncio.gather(*previous))
            async with pool.acquire() as conn:
                now = self._clock()
                if now >= self._next_purge:  # before, never holding topic locks
                    self._next_purge = now + _PURGE_INTERVAL
                    await conn.execute(self._sql.purge, now)
                async with conn.transaction():
                    return await self._append_tx(conn, drafts, times, topics, locked.future)
        finally:
            locked.release()
            self._appending -= 1
            if not self._appending:
                self._appends_done.set()

    def _queue_for_locks(self, topics: list[str]) -> _LockTurn:
        """Take this append's turn at the row locks of ``topics``, behind earlier calls."""
        tails = self._lock_tail
        turn = _LockTurn(
            asyncio.get_running_loop().create_future(),
            list({id(f): f for t in topics if (f := tails.get(t)) is not None}.values()),
        )
        for topic in topics:
            tails[topic] = turn.future

        def forget(future: asyncio.Future[None]) -> None:
            for topic in topics:
                if tails.get(topic) is future:
                    del tails[topic]

        turn.future.add_done_callback(forget)
        return turn

    async def _append_tx(
        self,
        conn: Any,
        drafts: list[EventDraft],
        times: list[int],
        topics: list[str],
        locked: asyncio.Future[None],
    ) -> list[AppendResult]:
        sql = self._sql
        keyed = any(draft.idempotency_key is not None for draft in drafts)
        counts = dict.fromkeys(topics, 0)
        if not keyed:
            for draft in drafts:
                counts[draft.topic] += 1
        rows = await conn.fetch(
            sql.lock_topics, topics, [new_epoch() for _ in topics], list(counts.values())
        )
        locked.set_result(None)
        epochs: dict[str, str] = {}
        last: dict[str, int] = {}
        for row in rows:
            epochs[row["topic"]] = row["epoch"]
            last[row["topic"]] = int(row["last_seq"]) - counts[row["topic"]]
        if not keyed:
            events = [
                StoredEvent.from_draft(d, epochs[d.topic], self._next(last, d)) for d in drafts
            ]
            await conn.execute(sql.insert_events, *_event_arrays(events, times))
            return [AppendResult(event) for event in events]

        now = self._clock()
        pairs = list(
            {(d.topic, d.idempotency_key) for d in drafts if d.idempotency_key is not None}
        )
        found = await conn.fetch(sql.find_keys, [p[0] for p in pairs], [p[1] for p in pairs], now)
        stored: dict[tuple[str, str], Any] = {(r["topic"], r["key"]): r for r in found}
        seen: dict[tuple[str, str], StoredEvent] = {}
        results: list[AppendResult] = []
        new_events: list[StoredEvent] = []
        new_times: list[int] = []
        key_rows: list[tuple[str, str, int]] = []
        for draft, micros in zip(drafts, times, strict=True):
            key = None if draft.idempotency_key is None else (draft.topic, draft.idempotency_key)
            if key is not None:
                original = seen.get(key)
                if original is None and key in stored:
                    original = self._original(draft, epochs[draft.topic], stored[key])
                if original is not None:
                    seen[key] = original
                    results.append(AppendResult(original, duplicate=True))
                    continue
            event = StoredEvent.from_draft(draft, epochs[draft.topic], self._next(last, draft))
            if key is not None:
                seen[key] = event
                key_rows.append((key[0], key[1], event.seq))
            new_events.append(event)
            new_times.append(micros)
            results.append(AppendResult(event))
        await conn.execute(
            sql.write_keyed,
            *_event_arrays(new_events, new_times),
            list(last),
            list(last.values()),
            [row[0] for row in key_rows],
            [row[1] for row in key_rows],
            [row[2] for row in key_rows],
            [now + self.dedupe_window] * len(key_rows),
        )
        return results

    @staticmethod
    def _next(last: dict[str, int], draft: EventDraft) -> int:
        last[draft.topic] += 1
        return last[draft.topic]

    @staticmethod
    def _original(draft: EventDraft, epoch: str, row: Any) -> StoredEvent:
        if row["id"] is None:  # trimmed since: the position is all that is left
            return StoredEvent.from_draft(draft, epoch, int(row["key_seq"]))
        return _event(draft.topic, epoch, row)

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        if limit <= 0:
            return []
        rows = await self._open_pool().fetch(self._sql.read, topic, after_seq, limit)
        return [_event(topic, row["epoch"], row) for row in rows]

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        if count <= 0:
            return []
        rows = await self._open_pool().fetch(self._sql.read_last, topic, count)
        return [_event(topic, row["epoch"], row) for row in rows]

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        since = rfc3339_micros(time)
        if limit <= 0:
            return []
        rows = await self._open_pool().fetch(self._sql.read_since_time, topic, since, limit)
        return [_event(topic, row["epoch"], row) for row in rows]

    async def position(self, topic: str) -> TopicPosition | None:
        row = await self._open_pool().fetchrow(self._sql.position, topic)
        if row is None:
            return None
        last_seq = int(row["last_seq"])
        first_seq = row["first_seq"]
        return TopicPosition(
            str(row["epoch"]), last_seq, last_seq + 1 if first_seq is None else int(first_seq)
        )

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        retention_cutoff(0, keep_last)  # validates keep_last
        bound = None if older_than is None else rfc3339_micros(older_than)
        async with self._open_pool().acquire() as conn, conn.transaction():
            # With no age bound the subquery compares with NULL and finds nothing.
            row = await conn.fetchrow(self._sql.trim_bounds, topic, bound)
            if row is None:
                return 0
            last_seq = int(row["last_seq"])
            first_new_seq = None
            if bound is not None:
                found = row["first_new_seq"]
                first_new_seq = last_seq + 1 if found is None else int(found)
            cutoff = retention_cutoff(last_seq, keep_last, first_new_seq)
            status = await conn.execute(self._sql.delete_before, topic, cutoff)
        return int(str(status).rsplit(" ", 1)[-1])

    async def topics(self) -> list[str]:
        rows = await self._open_pool().fetch(self._sql.topics)
        return [str(row["topic"]) for row in rows]

    async def reset(self, topic: str) -> str:
        sql = self._sql
        async with self._open_pool().acquire() as conn, conn.transaction():
            old = await conn.fetchval(sql.lock_topic, topic)
            epoch = new_epoch(None if old is None else str(old))
            await conn.execute(sql.reset_topic, topic, epoch)
            await conn.execute(sql.reset_events, topic)
            await conn.execute(sql.reset_keys, topic)
        return epoch

    def _open_pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool
