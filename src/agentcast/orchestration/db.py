"""The two databases a workflow store runs on, behind one small synchronous interface.

:class:`Db` is what the store's transaction code needs: a transaction, statements written
once with ``?`` placeholders and ``{p}`` as the table prefix, a per-instance lock, and the
connection the outbox writer adds rows on (so the outbox rows commit or roll back with
the instance). It is synchronous on purpose: the store runs a whole batch transaction in
one dedicated thread, so a batch costs one hand-off from the event loop rather than one
per statement.

* SQLite (:mod:`sqlite3`, WAL, ``synchronous=NORMAL``): ``BEGIN IMMEDIATE`` takes the
  database's single write lock, which serialises transactions (also across processes);
  the per-instance lock is a no-op.
* PostgreSQL (psycopg 3): a transaction-scoped advisory lock per instance, so concurrent
  orchestrators sharing the database never interleave two transitions of one instance.

Every method must be called from the thread that called :meth:`Db.open`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from agentcast.outbox.dsn import parse_dsn
from agentcast.outbox.schema import (
    DEFAULT_PARTITIONS,
    MIGRATION_LOCK,
    init_sqlite_connection,
    pg_prefix,
    postgres_ddl,
)

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
_LOAD = "SELECT state, meta FROM agentcast_wf_instances WHERE workflow = ? AND key = ?"
_SEEN = "SELECT 1 FROM agentcast_wf_processed WHERE workflow = ? AND key = ? AND event_id = ?"


class Db(Protocol):
    """One connection to the store's database (see the module doc)."""

    schema: str | None

    @property
    def outbox_conn(self) -> Any:
        """The connection to hand to :func:`agentcast.outbox.add` inside a transaction."""

    def open(self) -> None:
        """Connect and create the workflow and outbox tables (idempotent)."""

    def close(self) -> None: ...

    def begin(self) -> None:
        """Start a write transaction."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def lock(self, workflow: str, key: str) -> None:
        """Hold the instance until the transaction ends."""

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> None:
        """:meth:`lock` each ``(workflow, key)``, in the given order."""

    def load_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
        """The ``(state, meta)`` of each existing instance among ``keys``."""

    def processed_many(self, ids: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """Which ``(workflow, key, event_id)`` are in the processed set."""

    def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


class SqliteDb:
    """:mod:`sqlite3` on a WAL database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.schema: str | None = None
        self._conn: sqlite3.Connection | None = None

    @property
    def outbox_conn(self) -> Any:
        return self._open_conn()

    def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        init_sqlite_connection(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _TABLES:
                conn.execute(statement.format(p="", serial="INTEGER PRIMARY KEY"))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the workflow store is not open")
        return self._conn

    def begin(self) -> None:
        self._open_conn().execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._open_conn().execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def lock(self, workflow: str, key: str) -> None:
        return None

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> None:
        return None

    def load_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
        found = {}
        for workflow, key in keys:
            row = self._open_conn().execute(_LOAD, (workflow, key)).fetchone()
            if row is not None:
                found[workflow, key] = (str(row[0]), str(row[1]))
        return found

    def processed_many(self, ids: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        conn = self._open_conn()
        return {i for i in ids if conn.execute(_SEEN, i).fetchone() is not None}

    def execute(self, sql: str, *args: Any) -> int:
        return self._open_conn().execute(sql.format(p=""), args).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._open_conn().executemany(sql.format(p=""), rows)

    def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return self._open_conn().execute(sql.format(p=""), args).fetchall()


class PostgresDb:
    """psycopg 3 on one connection; tables in ``schema`` (or the ``search_path``)."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema
        self._prefix = pg_prefix(schema)
        self._conn: Any = None
        self._sql: dict[str, str] = {}

    @property
    def outbox_conn(self) -> Any:
        return self._open_conn()

    def open(self) -> None:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=False)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                for statement in postgres_ddl(self.schema, DEFAULT_PARTITIONS):
                    conn.execute(statement)
                for statement in _TABLES:
                    text = statement.format(p=self._prefix, serial="BIGSERIAL PRIMARY KEY")
                    conn.execute(text)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open_conn(self) -> Any:
        if self._conn is None:
            raise RuntimeError("the workflow store is not open")
        return self._conn

    def begin(self) -> None:
        self._open_conn()  # psycopg opens the transaction with the first statement

    def commit(self) -> None:
        self._open_conn().commit()

    def rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.rollback()

    def lock(self, workflow: str, key: str) -> None:
        self._open_conn().execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (INSTANCE_LOCK_CLASS, f"{workflow}\x1f{key}"),
        )

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> None:
        with self._open_conn().cursor() as cursor:
            cursor.executemany(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                [(INSTANCE_LOCK_CLASS, f"{w}\x1f{k}") for w, k in keys],
            )

    def load_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
        rows = self._open_conn().execute(
            f"SELECT workflow, key, state, meta FROM {self._prefix}agentcast_wf_instances"
            " WHERE (workflow, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([w for w, _ in keys], [k for _, k in keys]),
        )
        return {(str(w), str(k)): (str(s), str(m)) for w, k, s, m in rows.fetchall()}

    def processed_many(self, ids: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        rows = self._open_conn().execute(
            f"SELECT workflow, key, event_id FROM {self._prefix}agentcast_wf_processed"
            " WHERE (workflow, key, event_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
            ([w for w, _, _ in ids], [k for _, k, _ in ids], [e for _, _, e in ids]),
        )
        return {(str(w), str(k), str(e)) for w, k, e in rows.fetchall()}

    def _translate(self, sql: str) -> str:
        cached = self._sql.get(sql)
        if cached is None:
            cached = _PLACEHOLDER.sub("%s", sql.format(p=self._prefix))
            self._sql[sql] = cached
        return cached

    def execute(self, sql: str, *args: Any) -> int:
        return int(self._open_conn().execute(self._translate(sql), args).rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._open_conn().cursor() as cursor:
            cursor.executemany(self._translate(sql), rows)

    def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(self._open_conn().execute(self._translate(sql), args).fetchall())


def open_db(dsn: str) -> Db:
    """The :class:`Db` for ``sqlite:///path`` or ``postgresql://...[?schema=NAME]`` (not yet
    connected); raises ``ValueError`` for another form."""
    parsed = parse_dsn(dsn)
    if parsed.kind == "sqlite":
        return SqliteDb(parsed.target)
    return PostgresDb(parsed.target, parsed.schema)
