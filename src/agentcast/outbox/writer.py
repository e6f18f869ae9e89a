"""``add``: write an event into the outbox inside the caller's own database transaction.

The event becomes visible to relays exactly when the caller's transaction commits, and
vanishes with it on rollback. ``add`` never commits, never begins and never ends a
transaction: it issues one INSERT (on PostgreSQL with a per-key lock in the same statement)
on the connection it is given, and returns the new row id (for async connections, an
awaitable of it).

Per-key order: rows that share a ``key`` are published in the order their transactions
committed. On PostgreSQL the writer takes ``pg_advisory_xact_lock`` on the key's hash, so
two open transactions that add the same key are serialised (the second waits for the first
to commit or roll back; adding keys in a consistent order avoids deadlocks). On SQLite the
database's single writer already serialises transactions. Rows without a key have no order
guarantee and are spread over the partitions at random.

Supported connections: ``sqlite3.Connection`` and ``psycopg.Connection`` (synchronous,
returns the id), ``aiosqlite.Connection``, ``psycopg.AsyncConnection`` and
``asyncpg.Connection`` (return an awaitable). ``schema`` qualifies the PostgreSQL tables
(``None``: the connection's ``search_path``).
"""

from __future__ import annotations

import random
import sqlite3
import time
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import orjson

from agentcast.outbox.schema import KEY_LOCK_CLASS, pg_prefix

if TYPE_CHECKING:
    import psycopg

_SQLITE_INSERT = (
    "INSERT INTO agentcast_outbox (key_hash, topic, key, payload, headers, correlation_id,"
    " causation_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def key_hash(key: str | None) -> int:
    """The non-negative 31-bit hash that places a row in a partition (random without key)."""
    if key is None:
        return random.getrandbits(31)
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def _pg_insert(schema: str | None, keyed: bool, placeholder: str) -> str:
    ph = [placeholder.format(n) for n in range(1, 8)]
    columns = "(key_hash, topic, key, payload, headers, correlation_id, causation_id)"
    values = f"{ph[0]}, {ph[1]}, {ph[2]}, {ph[3]}::jsonb, {ph[4]}::jsonb, {ph[5]}, {ph[6]}"
    table = f"{pg_prefix(schema)}agentcast_outbox"
    if not keyed:
        return f"INSERT INTO {table} {columns} VALUES ({values}) RETURNING id"
    return (
        f"WITH key_lock AS (SELECT pg_advisory_xact_lock({KEY_LOCK_CLASS}, {ph[0]}::integer))"
        f" INSERT INTO {table} {columns} SELECT {values} FROM key_lock RETURNING id"
    )


def _params(
    topic: str,
    payload: Any,
    headers: Mapping[str, str] | None,
    key: str | None,
    correlation_id: str | None,
    causation_id: str | None,
) -> tuple[int, str, str | None, str, str | None, str | None, str | None]:
    if not topic:
        raise ValueError("topic must not be empty")
    if headers is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError("headers must map strings to strings")
    return (
        key_hash(key),
        topic,
        key,
        orjson.dumps(payload).decode(),
        None if headers is None else orjson.dumps(dict(headers)).decode(),
        correlation_id,
        causation_id,
    )


@overload
def add(  # type: ignore[overload-overlap]
    conn: sqlite3.Connection | psycopg.Connection[Any],
    topic: str,
    payload: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    schema: str | None = None,
) -> int: ...


@overload
def add(
    conn: object,
    topic: str,
    payload: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    schema: str | None = None,
) -> Awaitable[int]: ...


def add(
    conn: object,
    topic: str,
    payload: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    schema: str | None = None,
) -> int | Awaitable[int]:
    """Insert one outbox row in ``conn``'s current transaction; return its id.

    Raises ``ValueError`` for an empty topic, non-string headers, an unsupported connection,
    or a connection in autocommit mode outside a transaction (the row would be visible at
    once and the per-key lock would not hold until commit).
    """
    params = _params(topic, payload, headers, key, correlation_id, causation_id)
    module = type(conn).__module__
    if isinstance(conn, sqlite3.Connection):
        if conn.isolation_level is None and not conn.in_transaction:
            raise ValueError("the sqlite3 connection is in autocommit mode outside BEGIN")
        cursor = conn.execute(_SQLITE_INSERT, (*params, time.time()))
        return int(cursor.lastrowid or 0)
    if module.startswith("aiosqlite"):
        return _add_aiosqlite(conn, params)
    if module.startswith("asyncpg"):
        return _add_asyncpg(conn, params, schema, key is not None)
    if module.startswith("psycopg"):
        import psycopg

        sql = _pg_insert(schema, key is not None, "%(p{})s")
        named = {f"p{n}": value for n, value in enumerate(params, start=1)}
        if isinstance(conn, psycopg.AsyncConnection):
            return _add_psycopg_async(conn, sql, named)
        if isinstance(conn, psycopg.Connection):
            _check_psycopg(conn.autocommit, conn.info.transaction_status)
            row = conn.execute(sql, named).fetchone()
            assert row is not None
            return int(row[0])
    raise ValueError(f"unsupported connection type: {type(conn).__qualname__}")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One row for :func:`add_many` (the arguments of :func:`add`)."""

    topic: str
    payload: Any = None
    headers: Mapping[str, str] | None = None
    key: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


def add_many(
    conn: sqlite3.Connection | psycopg.Connection[Any],
    messages: Sequence[OutboxMessage],
    *,
    schema: str | None = None,
) -> None:
    """Insert ``messages`` in ``conn``'s current transaction as :func:`add` would one by one
    (rows sharing a key keep their order and take the same lock), batched.

    Synchronous connections only (``sqlite3`` and ``psycopg``); raises ``ValueError`` like
    :func:`add`.
    """
    if not messages:
        return
    params = [
        _params(m.topic, m.payload, m.headers, m.key, m.correlation_id, m.causation_id)
        for m in messages
    ]
    if isinstance(conn, sqlite3.Connection):
        if conn.isolation_level is None and not conn.in_transaction:
            raise ValueError("the sqlite3 connection is in autocommit mode outside BEGIN")
        now = time.time()
        conn.executemany(_SQLITE_INSERT, [(*row, now) for row in params])
        return
    import psycopg

    if not isinstance(conn, psycopg.Connection):
        raise ValueError(f"unsupported connection type: {type(conn).__qualname__}")
    _check_psycopg(conn.autocommit, conn.info.transaction_status)
    with conn.cursor() as cursor:
        for keyed in (True, False):
            rows = [
                {f"p{n}": value for n, value in enumerate(row, start=1)}
                for row, m in zip(params, messages, strict=True)
                if (m.key is not None) == keyed
            ]
            if rows:
                cursor.executemany(_pg_insert(schema, keyed, "%(p{})s"), rows)


def _check_psycopg(autocommit: bool, status: object) -> None:
    import psycopg.pq

    if autocommit and status == psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("the psycopg connection is in autocommit mode outside a transaction")


async def _add_aiosqlite(conn: Any, params: tuple[Any, ...]) -> int:
    if conn.isolation_level is None and not conn.in_transaction:
        raise ValueError("the aiosqlite connection is in autocommit mode outside BEGIN")
    cursor = await conn.execute(_SQLITE_INSERT, (*params, time.time()))
    row_id = cursor.lastrowid
    await cursor.close()
    return int(row_id or 0)


async def _add_asyncpg(conn: Any, params: tuple[Any, ...], schema: str | None, keyed: bool) -> int:
    if not conn.is_in_transaction():
        raise ValueError("the asyncpg connection is not inside a transaction")
    row_id = await conn.fetchval(_pg_insert(schema, keyed, "${}"), *params)
    return int(row_id)


async def _add_psycopg_async(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> int:
    _check_psycopg(conn.autocommit, conn.info.transaction_status)
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
