"""The application's side of an outbox in tests: its own connection and transactions,
on PostgreSQL (asyncpg) or SQLite (aiosqlite), writing through ``outbox.add``."""

from __future__ import annotations

from typing import Any

import aiosqlite
import asyncpg

from agentcast import outbox
from agentcast.outbox.dsn import parse_dsn


class AppDb:
    """One application connection to the outbox database at ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self.parsed = parse_dsn(dsn)
        self.conn: Any = None
        self._tx: Any = None

    async def open(self) -> AppDb:
        if self.parsed.kind == "postgres":
            self.conn = await asyncpg.connect(self.parsed.target)
        else:
            self.conn = await aiosqlite.connect(self.parsed.target, isolation_level=None)
            await self.conn.execute("PRAGMA busy_timeout=10000")
        return self

    async def close(self) -> None:
        await self.conn.close()

    async def begin(self) -> None:
        if self.parsed.kind == "postgres":
            self._tx = self.conn.transaction()
            await self._tx.start()
        else:
            await self.conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        if self.parsed.kind == "postgres":
            await self._tx.commit()
        else:
            await self.conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self.parsed.kind == "postgres":
            await self._tx.rollback()
        else:
            await self.conn.execute("ROLLBACK")

    async def add(self, topic: str, payload: Any, *, key: str | None = None) -> int:
        return await outbox.add(self.conn, topic, payload, key=key, schema=self.parsed.schema)

    async def scalar(self, sql: str) -> Any:
        """One value from ``sql`` (table names unqualified: the outbox schema is used)."""
        if self.parsed.kind == "postgres":
            schema = self.parsed.schema
            sql = sql.replace("agentcast_outbox", f'"{schema}".agentcast_outbox')
            return await self.conn.fetchval(sql)
        async with self.conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str) -> None:
        if self.parsed.kind == "postgres":
            schema = self.parsed.schema
            await self.conn.execute(sql.replace("agentcast_outbox", f'"{schema}".agentcast_outbox'))
        else:
            await self.conn.execute(sql)
