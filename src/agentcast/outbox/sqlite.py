"""``SqliteOutboxStore``: the relay's side of an outbox in a SQLite file (aiosqlite).

SQLite has no notifications: the relay polls. Every claim and lease change runs in a
``BEGIN IMMEDIATE`` transaction (the database's single writer lock), and lease times use
the local clock, which all processes sharing one SQLite file have in common.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import orjson

from agentcast.outbox.store import OutboxRow

BUSY_TIMEOUT_MS = 10_000


class SqliteOutboxStore:
    """An outbox in the SQLite database at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partitions = 0
        self._conn: Any = None

    async def open(self) -> None:
        import aiosqlite

        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await self._conn.execute("PRAGMA journal_mode=WAL")
        async with self._conn.execute(
            "SELECT value FROM agentcast_outbox_meta WHERE name = 'partitions'"
        ) as cursor:
            row = await cursor.fetchone()
        self.partitions = int(row[0])

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _begin(self) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")

    async def balance(self, relay: str, ttl: float) -> frozenset[int]:
        conn = self._conn
        await self._begin()
        try:
            now = time.time()
            await conn.execute(
                """INSERT INTO agentcast_outbox_relays VALUES (?, ?)
                   ON CONFLICT (relay) DO UPDATE SET alive_until = excluded.alive_until""",
                (relay, now + ttl),
            )
            ((live,),) = await self._fetchall(
                "SELECT count(*) FROM agentcast_outbox_relays WHERE alive_until > ?", (now,)
            )
            target = math.ceil(self.partitions / max(1, int(live)))
            rows = await self._fetchall(
                """UPDATE agentcast_outbox_partitions SET lease_until = ?
                   WHERE owner = ? AND lease_until > ? RETURNING partition""",
                (now + ttl, relay, now),
            )
            held = sorted(int(r[0]) for r in rows)
            if len(held) > target:
                for partition in held[target:]:
                    await conn.execute(
                        """UPDATE agentcast_outbox_partitions SET owner = NULL,
                           lease_until = NULL WHERE owner = ? AND partition = ?""",
                        (relay, partition),
                    )
                held = held[:target]
            elif len(held) < target:
                free = await self._fetchall(
                    """SELECT partition FROM agentcast_outbox_partitions
                       WHERE owner IS NULL OR lease_until IS NULL OR lease_until <= ?
                       ORDER BY partition LIMIT ?""",
                    (now, target - len(held)),
                )
                for (partition,) in free:
                    await conn.execute(
                        """UPDATE agentcast_outbox_partitions SET owner = ?, lease_until = ?
                           WHERE partition = ?""",
                        (relay, now + ttl, partition),
                    )
                    held.append(int(partition))
            await conn.execute(
                "DELETE FROM agentcast_outbox_relays WHERE alive_until < ?", (now - 60.0,)
            )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return frozenset(held)

    async def renew(self, relay: str, ttl: float, ids: list[int]) -> frozenset[int]:
        conn = self._conn
        await self._begin()
        try:
            now = time.time()
            await conn.execute(
                "UPDATE agentcast_outbox_relays SET alive_until = ? WHERE relay = ?",
                (now + ttl, relay),
            )
            rows = await self._fetchall(
                """UPDATE agentcast_outbox_partitions SET lease_until = ?
                   WHERE owner = ? AND lease_until > ? RETURNING partition""",
                (now + ttl, relay, now),
            )
            held = frozenset(int(r[0]) for r in rows)
            await conn.executemany(
                """UPDATE agentcast_outbox SET lease_until = ?
                   WHERE id = ? AND claimed_by = ? AND published_at IS NULL
                     AND lease_until > ? AND key_hash % ? IN
                         (SELECT partition FROM agentcast_outbox_partitions WHERE owner = ?)""",
                [(now + ttl, row_id, relay, now, self.partitions, relay) for row_id in ids],
            )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return held

    async def release(self, relay: str) -> None:
        conn = self._conn
        await self._begin()
        try:
            await conn.execute(
                """UPDATE agentcast_outbox_partitions SET owner = NULL, lease_until = NULL
                   WHERE owner = ?""",
                (relay,),
            )
            await conn.execute("DELETE FROM agentcast_outbox_relays WHERE relay = ?", (relay,))
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise

    async def claim(self, relay: str, limit: int) -> list[OutboxRow]:
        conn = self._conn
        await self._begin()
        try:
            now = time.time()
            rows = await self._fetchall(
                """SELECT o.id, o.key_hash % ?, o.topic, o.key, o.payload, o.headers,
                          o.correlation_id, o.causation_id, o.created_at,
                          (o.claimed_by IS NOT NULL AND o.claimed_by <> ?
                           AND o.lease_until > ?), pt.lease_until
                   FROM agentcast_outbox o
                   JOIN agentcast_outbox_partitions pt ON pt.partition = o.key_hash % ?
                   WHERE o.published_at IS NULL AND pt.owner = ? AND pt.lease_until > ?
                   ORDER BY o.id LIMIT ?""",
                (self.partitions, relay, now, self.partitions, relay, now, limit),
            )
            blocked: set[int] = set()
            claimed: list[OutboxRow] = []
            updates: list[tuple[Any, ...]] = []
            for r in rows:
                partition = int(r[1])
                if partition in blocked or r[9]:
                    blocked.add(partition)
                    continue
                claimed.append(_row(r, partition))
                updates.append((relay, r[10], r[0]))
            await conn.executemany(
                """UPDATE agentcast_outbox SET claimed_by = ?, lease_until = ?,
                   attempts = attempts + 1 WHERE id = ?""",
                updates,
            )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return claimed

    async def mark_published(self, relay: str, ids: list[int]) -> list[int]:
        if not ids:
            return []
        conn = self._conn
        await self._begin()
        try:
            now = time.time()
            marked: list[int] = []
            for row_id in ids:
                rows = await self._fetchall(
                    """UPDATE agentcast_outbox SET published_at = ?, claimed_by = NULL,
                           lease_until = NULL
                       WHERE id = ? AND published_at IS NULL AND claimed_by = ?
                         AND lease_until > ?
                         AND EXISTS (SELECT 1 FROM agentcast_outbox_partitions pt
                                     WHERE pt.partition = agentcast_outbox.key_hash % ?
                                       AND pt.owner = ? AND pt.lease_until > ?)
                       RETURNING id""",
                    (now, row_id, relay, now, self.partitions, relay, now),
                )
                marked += [int(r[0]) for r in rows]
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return marked

    async def oldest_unpublished_age(self) -> float | None:
        rows = await self._fetchall(
            """SELECT created_at FROM agentcast_outbox WHERE published_at IS NULL
               ORDER BY id LIMIT 1"""
        )
        return None if not rows else max(0.0, time.time() - float(rows[0][0]))

    async def purge(self, older_than: float, limit: int) -> int:
        conn = self._conn
        await self._begin()
        try:
            rows = await self._fetchall(
                """DELETE FROM agentcast_outbox WHERE id IN (
                       SELECT id FROM agentcast_outbox
                       WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?)
                   RETURNING id""",
                (time.time() - older_than, limit),
            )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return len(rows)

    async def wait_for_rows(self, max_wait: float) -> None:
        import asyncio

        await asyncio.sleep(max_wait)


async def _rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


def _row(r: Any, partition: int) -> OutboxRow:
    return OutboxRow(
        id=int(r[0]),
        partition=partition,
        topic=str(r[2]),
        key=r[3],
        payload=None if r[4] is None else orjson.loads(r[4]),
        headers=None if r[5] is None else dict(orjson.loads(r[5])),
        correlation_id=r[6],
        causation_id=r[7],
        created_at=float(r[8]),
    )
