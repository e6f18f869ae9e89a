"""``outbox.add`` on every supported connection type, inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import asyncpg
import psycopg
import pytest
from click.testing import CliRunner

from agentcast import outbox
from agentcast.cli import main
from agentcast.outbox.dsn import parse_dsn
from tests.pg import PG_DSN


def sqlite_path(dsn: str) -> str:
    return parse_dsn(dsn).target


def test_sqlite3_commit_and_rollback(sqlite_outbox: str) -> None:
    conn = sqlite3.connect(sqlite_path(sqlite_outbox))
    try:
        first = outbox.add(conn, "acme.t", {"a": 1}, key="k", headers={"h": "v"})
        conn.commit()
        outbox.add(conn, "acme.t", {"a": 2}, key="k")
        conn.rollback()
        rows = conn.execute(
            "SELECT id, topic, key, payload, headers FROM agentcast_outbox"
        ).fetchall()
        assert rows == [(first, "acme.t", "k", '{"a":1}', '{"h":"v"}')]
    finally:
        conn.close()


def test_sqlite3_autocommit_is_refused(sqlite_outbox: str) -> None:
    conn = sqlite3.connect(sqlite_path(sqlite_outbox), isolation_level=None)
    try:
        with pytest.raises(ValueError, match="autocommit"):
            outbox.add(conn, "acme.t", 1)
        conn.execute("BEGIN")
        outbox.add(conn, "acme.t", 1)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_aiosqlite(sqlite_outbox: str) -> None:
    async with aiosqlite.connect(sqlite_path(sqlite_outbox)) as conn:
        row_id = await outbox.add(conn, "acme.t", [1, 2], correlation_id="c", causation_id="x")
        await conn.commit()
        async with conn.execute(
            "SELECT payload, correlation_id, causation_id FROM agentcast_outbox WHERE id = ?",
            (row_id,),
        ) as cursor:
            assert await cursor.fetchone() == ("[1,2]", "c", "x")


async def test_asyncpg_needs_a_transaction(pg_outbox: str) -> None:
    schema = parse_dsn(pg_outbox).schema
    conn = await asyncpg.connect(PG_DSN)
    try:
        with pytest.raises(ValueError, match="transaction"):
            await outbox.add(conn, "acme.t", 1, schema=schema)
        async with conn.transaction():
            row_id = await outbox.add(conn, "acme.t", {"x": 1}, key="k", schema=schema)
        payload = await conn.fetchval(
            f'SELECT payload::text FROM "{schema}".agentcast_outbox WHERE id = $1', row_id
        )
        assert payload == '{"x": 1}'
    finally:
        await conn.close()


def test_psycopg_sync(pg_outbox: str) -> None:
    schema = parse_dsn(pg_outbox).schema
    with psycopg.connect(PG_DSN) as conn:
        kept = outbox.add(conn, "acme.t", {"n": 1}, key="k", schema=schema)
        conn.commit()
        outbox.add(conn, "acme.t", {"n": 2}, schema=schema)
        conn.rollback()
        rows = conn.execute(f'SELECT id FROM "{schema}".agentcast_outbox').fetchall()
        assert rows == [(kept,)]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            outbox.add(conn, "acme.t", 1, schema=schema)
        with conn.transaction():
            outbox.add(conn, "acme.t", 1, schema=schema)


async def test_psycopg_async(pg_outbox: str) -> None:
    schema = parse_dsn(pg_outbox).schema
    async with await psycopg.AsyncConnection.connect(PG_DSN) as conn:
        row_id = await outbox.add(conn, "acme.t", "hi", key="k", schema=schema)
        await conn.commit()
        cursor = await conn.execute(
            f'SELECT topic FROM "{schema}".agentcast_outbox WHERE id = %s', (row_id,)
        )
        assert await cursor.fetchone() == ("acme.t",)


def test_bad_arguments_are_refused(sqlite_outbox: str) -> None:
    conn = sqlite3.connect(sqlite_path(sqlite_outbox))
    try:
        with pytest.raises(ValueError, match="topic"):
            outbox.add(conn, "", 1)
        with pytest.raises(ValueError, match="headers"):
            outbox.add(conn, "acme.t", 1, headers={"h": 1})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="unsupported"):
            outbox.add(object(), "acme.t", 1)  # type: ignore[call-overload]
    finally:
        conn.close()


def test_cli_init_is_idempotent(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/cli.db"
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["outbox", "init", "--dsn", dsn, "--partitions", "4"])
        assert result.exit_code == 0, result.output
    again = runner.invoke(main, ["outbox", "init", "--dsn", dsn, "--partitions", "9"])
    assert again.exit_code == 0
    conn = sqlite3.connect(sqlite_path(dsn))
    try:
        assert conn.execute("SELECT count(*) FROM agentcast_outbox_partitions").fetchone() == (4,)
    finally:
        conn.close()
    bad = runner.invoke(main, ["outbox", "init", "--dsn", "mysql://x"])
    assert bad.exit_code != 0


async def test_postgres_init_twice(pg_outbox: str) -> None:
    await outbox.init_outbox(pg_outbox, partitions=3)
    schema = parse_dsn(pg_outbox).schema
    conn = await asyncpg.connect(PG_DSN)
    try:
        count = await conn.fetchval(f'SELECT count(*) FROM "{schema}".agentcast_outbox_partitions')
        assert count == 8
    finally:
        await conn.close()


MESSAGES = [
    outbox.OutboxMessage("acme.t", {"n": 1}, key="a", correlation_id="c1"),
    outbox.OutboxMessage("acme.t", {"n": 2}, headers={"h": "v"}),
    outbox.OutboxMessage("acme.t", {"n": 3}, key="a", causation_id="x"),
]


def test_add_many_sqlite3(sqlite_outbox: str) -> None:
    conn = sqlite3.connect(sqlite_path(sqlite_outbox))
    try:
        outbox.add_many(conn, MESSAGES)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM agentcast_outbox").fetchone() == (0,)
        outbox.add_many(conn, MESSAGES)
        conn.commit()
        rows = conn.execute(
            "SELECT key, payload, correlation_id, causation_id FROM agentcast_outbox ORDER BY id"
        ).fetchall()
        assert rows == [("a", '{"n":1}', "c1", None), (None, '{"n":2}', None, None),
                        ("a", '{"n":3}', None, "x")]  # fmt: skip
    finally:
        conn.close()


def test_add_many_psycopg_keeps_each_keys_order(pg_outbox: str) -> None:
    parsed = parse_dsn(pg_outbox)
    with psycopg.connect(parsed.target) as conn:
        outbox.add_many(conn, MESSAGES, schema=parsed.schema)
        conn.commit()
        rows = conn.execute(
            f'SELECT key, payload FROM "{parsed.schema}".agentcast_outbox ORDER BY id'
        ).fetchall()
    keyed = [payload["n"] for key, payload in rows if key == "a"]
    assert keyed == [1, 3] and sorted(p["n"] for _, p in rows) == [1, 2, 3]
    with psycopg.connect(parsed.target, autocommit=True) as conn, pytest.raises(ValueError):
        outbox.add_many(conn, MESSAGES, schema=parsed.schema)
