"""The outbox tables and their idempotent migrations, for PostgreSQL and SQLite.

Tables (``agentcast_outbox*``, in the given PostgreSQL schema or the SQLite file):

- ``agentcast_outbox``: one row per event. ``id`` is never reused (identity /
  ``AUTOINCREMENT``), so ``outbox:<id>`` is a stable idempotency key. ``key_hash`` places the
  row in a partition (``key_hash % partitions``). ``published_at`` is NULL until a relay
  has had the node accept the row; ``claimed_by``/``lease_until`` are the row lease.
- ``agentcast_outbox_partitions``: one row per partition with its owning relay and lease.
- ``agentcast_outbox_relays``: live relays (a heartbeat), to share partitions fairly.
- ``agentcast_outbox_meta``: the schema version and the partition count.

Running a migration again is a no-op; the partition count is fixed by the first run.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from agentcast.outbox.dsn import check_identifier, parse_dsn
from agentcast.storage.sqlite_wal import enable_wal

SCHEMA_VERSION = 1
DEFAULT_PARTITIONS = 16
CHANNEL = "agentcast_outbox"
# classid of the two-int advisory locks the writer takes per key (never clashes with the
# single-bigint form applications commonly use).
KEY_LOCK_CLASS = 0x61630B01 & 0x7FFFFFFF
MIGRATION_LOCK = 0x61630B00


def pg_prefix(schema: str | None) -> str:
    """``"schema".`` or empty: the qualifier for outbox table names."""
    return "" if schema is None else f'"{check_identifier(schema)}".'


def pg_channel(schema: str | None) -> str:
    """The LISTEN/NOTIFY channel of the outbox in ``schema``."""
    return CHANNEL if schema is None else f"{CHANNEL}_{check_identifier(schema)}"[:63]


def postgres_ddl(schema: str | None, partitions: int) -> list[str]:
    """The statements that create (or leave alone) the outbox in ``schema``."""
    p = pg_prefix(schema)
    channel = pg_channel(schema).replace("'", "''")
    statements = []
    if schema is not None:
        statements.append(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    statements += [
        f"""CREATE TABLE IF NOT EXISTS {p}agentcast_outbox_meta (
            name text PRIMARY KEY, value bigint NOT NULL)""",
        f"""INSERT INTO {p}agentcast_outbox_meta VALUES
            ('version', {SCHEMA_VERSION}), ('partitions', {int(partitions)})
            ON CONFLICT (name) DO NOTHING""",
        f"""CREATE TABLE IF NOT EXISTS {p}agentcast_outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key_hash integer NOT NULL,
            topic text NOT NULL,
            key text,
            payload jsonb,
            headers jsonb,
            correlation_id text,
            causation_id text,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            published_at timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            claimed_by text,
            lease_until timestamptz)""",
        f"""CREATE INDEX IF NOT EXISTS agentcast_outbox_pending
            ON {p}agentcast_outbox (id) WHERE published_at IS NULL""",
        f"""CREATE INDEX IF NOT EXISTS agentcast_outbox_published
            ON {p}agentcast_outbox (published_at) WHERE published_at IS NOT NULL""",
        f"""CREATE TABLE IF NOT EXISTS {p}agentcast_outbox_partitions (
            partition integer PRIMARY KEY,
            owner text,
            lease_until timestamptz)""",
        f"""INSERT INTO {p}agentcast_outbox_partitions (partition)
            SELECT generate_series(0, value - 1)::integer
            FROM {p}agentcast_outbox_meta WHERE name = 'partitions'
            ON CONFLICT (partition) DO NOTHING""",
        f"""CREATE TABLE IF NOT EXISTS {p}agentcast_outbox_relays (
            relay text PRIMARY KEY,
            alive_until timestamptz NOT NULL)""",
        f"""CREATE OR REPLACE FUNCTION {p}agentcast_outbox_notify() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{channel}', '');
                RETURN NULL;
            END $$""",
        f"""CREATE OR REPLACE TRIGGER agentcast_outbox_notify
            AFTER INSERT ON {p}agentcast_outbox
            FOR EACH STATEMENT EXECUTE FUNCTION {p}agentcast_outbox_notify()""",
    ]
    return statements


SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS agentcast_outbox_meta (
        name TEXT PRIMARY KEY, value INTEGER NOT NULL)""",
    f"""INSERT OR IGNORE INTO agentcast_outbox_meta VALUES ('version', {SCHEMA_VERSION})""",
    """INSERT OR IGNORE INTO agentcast_outbox_meta VALUES ('partitions', :partitions)""",
    """CREATE TABLE IF NOT EXISTS agentcast_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_hash INTEGER NOT NULL,
        topic TEXT NOT NULL,
        key TEXT,
        payload TEXT,
        headers TEXT,
        correlation_id TEXT,
        causation_id TEXT,
        created_at REAL NOT NULL,
        published_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT,
        lease_until REAL)""",
    """CREATE INDEX IF NOT EXISTS agentcast_outbox_pending
        ON agentcast_outbox (id) WHERE published_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS agentcast_outbox_published
        ON agentcast_outbox (published_at) WHERE published_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS agentcast_outbox_partitions (
        partition INTEGER PRIMARY KEY, owner TEXT, lease_until REAL)""",
    """CREATE TABLE IF NOT EXISTS agentcast_outbox_relays (
        relay TEXT PRIMARY KEY, alive_until REAL NOT NULL)""",
]


def init_sqlite_connection(conn: sqlite3.Connection, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Create the outbox in the database of ``conn`` (idempotent) and commit."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    enable_wal(conn)
    with conn:
        for statement in SQLITE_DDL:
            conn.execute(statement, {"partitions": partitions})
        (count,) = conn.execute(
            "SELECT value FROM agentcast_outbox_meta WHERE name = 'partitions'"
        ).fetchone()
        conn.executemany(
            "INSERT OR IGNORE INTO agentcast_outbox_partitions (partition) VALUES (?)",
            [(n,) for n in range(int(count))],
        )


async def init_postgres_connection(
    conn: Any, schema: str | None = None, partitions: int = DEFAULT_PARTITIONS
) -> None:
    """Create the outbox through the asyncpg connection ``conn`` (idempotent; serialised
    against concurrent runs by an advisory lock)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        for statement in postgres_ddl(schema, partitions):
            await conn.execute(statement)


async def init_outbox(dsn: str, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Create the outbox named by ``dsn`` (see :func:`~agentcast.outbox.dsn.parse_dsn`)."""
    parsed = parse_dsn(dsn)
    if parsed.kind == "sqlite":
        conn = sqlite3.connect(parsed.target)
        try:
            init_sqlite_connection(conn, partitions)
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(parsed.target)
    try:
        await init_postgres_connection(pg, parsed.schema, partitions)
    finally:
        await pg.close()
