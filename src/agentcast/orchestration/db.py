"""The two databases a workflow store runs on, behind one small async interface.

:class:`Db` is what :class:`~agentcast.orchestration.store.WorkflowStore` needs: a
transaction, a few statements written once with ``?`` placeholders and ``{p}`` as the table
prefix, a per-instance lock, and the connection the outbox writer adds rows on (so the
outbox rows commit or roll back with the instance). SQLite (aiosqlite, WAL, one writer:
``BEGIN IMMEDIATE`` serialises transactions, the lock is a no-op) and PostgreSQL (asyncpg,
a transaction-scoped advisory lock per instance, so concurrent orchestrators sharing the
database never interleave two transitions of one instance).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from agentcast.outbox.dsn import parse_dsn
from agentcast.outbox.schema import init_postgres_connection, init_sqlite_connection, pg_prefix

INSTANCE_LOCK_CLASS = 0x61637766  # advisory lock class of workflow instances ("acwf")

_TABLES = [
    """CREATE TABLE IF NOT EXISTS {p}agentcast_wf_instances (
        workflow TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
        step BIGINT NOT NULL, state TEXT NOT NULL, meta TEXT NOT NULL,
        updated_us BIGINT NOT NULL, PRIMARY KEY (workflow, key))""",
    """CREATE TABLE IF NOT EXISTS {p}agentcast_wf_processed (
        workflow TEXT NOT NULL, key TEXT NOT NULL, event_id TEXT NOT NULL,
        PRIMARY KEY (workflow, key, event_id))""",
    """CREATE TABLE IF NOT EXISTS {p}agentcast_wf_log (
        workflow TEXT NOT NULL, key TEXT NOT NULL, step BIGINT NOT NULL,
        input TEXT NOT NULL, effects TEXT NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY (workflow, key, step))""",
    """CREATE TABLE IF NOT EXISTS {p}agentcast_wf_wakeups (
        workflow TEXT NOT NULL, key TEXT NOT NULL, wakeup TEXT NOT NULL,
        due_us BIGINT NOT NULL, PRIMARY KEY (workflow, key, wakeup))""",
    """CREATE INDEX IF NOT EXISTS agentcast_wf_wakeups_due
        ON {p}agentcast_wf_wakeups (due_us)""",
    """CREATE TABLE IF NOT EXISTS {p}agentcast_wf_parked (
        id {serial}, workflow TEXT NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS agentcast_wf_parked_instance
        ON {p}agentcast_wf_parked (workflow, key, id)""",
]

_PLACEHOLDER = re.compile(r"\?")


class Db(Protocol):
    """One connection to the store's database."""

    schema: str | None

    @property
    def outbox_conn(self) -> object:
        """The connection to hand to :func:`agentcast.outbox.add` inside a transaction."""

    async def open(self) -> None:
        """Connect and create the workflow and outbox tables (idempotent)."""

    async def close(self) -> None: ...

    async def begin(self) -> None:
        """Start a write transaction."""

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    async def lock(self, workflow: str, key: str) -> None:
        """Hold the instance until the transaction ends."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


class SqliteDb:
    """aiosqlite on a WAL database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.schema: str | None = None
        self._conn: Any = None

    @property
    def outbox_conn(self) -> object:
        return self._conn

    async def open(self) -> None:
        import aiosqlite

        setup = sqlite3.connect(self.path)
        try:
            init_sqlite_connection(setup)
            with setup:
                for statement in _TABLES:
                    setup.execute(statement.format(p="", serial="INTEGER PRIMARY KEY"))
        finally:
            setup.close()
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.execute("PRAGMA busy_timeout=10000")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def begin(self) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            await self._conn.execute("ROLLBACK")

    async def lock(self, workflow: str, key: str) -> None:
        return None

    def _open_conn(self) -> Any:
        if self._conn is None:
            raise RuntimeError("the workflow store is not open")
        return self._conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._open_conn().execute(sql.format(p=""), args)
        count = int(cursor.rowcount)
        await cursor.close()
        return count

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        cursor = await self._open_conn().execute(sql.format(p=""), args)
        rows = await cursor.fetchall()
        await cursor.close()
        return list(rows)


class PostgresDb:
    """asyncpg on one connection; tables in ``schema`` (or the ``search_path``)."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema
        self._prefix = pg_prefix(schema)
        self._conn: Any = None
        self._tx: Any = None
        self._sql: dict[str, str] = {}

    @property
    def outbox_conn(self) -> object:
        return self._conn

    async def open(self) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(self.url)
        if self.schema is not None:
            await self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        await init_postgres_connection(self._conn, self.schema)
        async with self._conn.transaction():
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", INSTANCE_LOCK_CLASS)
            for statement in _TABLES:
                await self._conn.execute(
                    statement.format(p=self._prefix, serial="BIGSERIAL PRIMARY KEY")
                )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def begin(self) -> None:
        self._tx = self._conn.transaction()
        await self._tx.start()

    async def commit(self) -> None:
        tx, self._tx = self._tx, None
        await tx.commit()

    async def rollback(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None and self._conn is not None and not self._conn.is_closed():
            await tx.rollback()

    async def lock(self, workflow: str, key: str) -> None:
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            INSTANCE_LOCK_CLASS,
            f"{workflow}\x1f{key}",
        )

    def _translate(self, sql: str) -> str:
        cached = self._sql.get(sql)
        if cached is None:
            counter = iter(range(1, 1000))
            cached = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql.format(p=self._prefix))
            self._sql[sql] = cached
        return cached

    def _open_conn(self) -> Any:
        if self._conn is None:
            raise RuntimeError("the workflow store is not open")
        return self._conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._open_conn().execute(self._translate(sql), *args)
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self._open_conn().fetch(self._translate(sql), *args))


def open_db(dsn: str) -> Db:
    """The :class:`Db` for ``sqlite:///path`` or ``postgresql://...[?schema=NAME]`` (not yet
    connected); raises ``ValueError`` for another form."""
    parsed = parse_dsn(dsn)
    if parsed.kind == "sqlite":
        return SqliteDb(parsed.target)
    return PostgresDb(parsed.target, parsed.schema)
