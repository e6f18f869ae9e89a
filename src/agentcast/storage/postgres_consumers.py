"""Consumer-group progress in PostgreSQL, beside the history tables (same schema)."""

from __future__ import annotations

from typing import Any

import asyncpg

from agentcast.storage.consumers import GroupProgress


class PostgresConsumerStore:
    """:class:`~agentcast.storage.consumers.ConsumerStore` on PostgreSQL (asyncpg).

    A :meth:`save` is one committed upsert; nodes sharing a group share its row (the last
    save wins, and every node saves only progress it has seen acked).
    """

    def __init__(self, dsn: str, schema: str = "agentcast") -> None:
        self.dsn = dsn
        self.schema = schema
        self._pool: Any = None

    @property
    def _table(self) -> str:
        return f'"{self.schema}".consumer_groups'

    async def open(self) -> None:
        """Create the table if needed; nodes starting together serialise on an advisory
        lock (concurrent ``CREATE ... IF NOT EXISTS`` can still collide in PostgreSQL)."""
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"agentcast:{self.schema}"
                )
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} (topic TEXT NOT NULL, grp TEXT"
                    " NOT NULL, epoch TEXT NOT NULL, floor BIGINT NOT NULL, done BIGINT[] NOT"
                    " NULL, PRIMARY KEY (topic, grp))"
                )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        row = await self._pool.fetchrow(
            f"SELECT epoch, floor, done FROM {self._table} WHERE topic = $1 AND grp = $2",
            topic,
            group,
        )
        if row is None:
            return None
        return GroupProgress(row["epoch"], row["floor"], frozenset(row["done"]))

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        await self._pool.execute(
            f"INSERT INTO {self._table} (topic, grp, epoch, floor, done) VALUES"
            " ($1, $2, $3, $4, $5) ON CONFLICT (topic, grp) DO UPDATE SET"
            " epoch = excluded.epoch, floor = excluded.floor, done = excluded.done",
            topic,
            group,
            progress.epoch,
            progress.floor,
            sorted(progress.done),
        )
