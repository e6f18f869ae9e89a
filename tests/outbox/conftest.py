"""Fixtures for the outbox: a throwaway PostgreSQL schema or SQLite file holding an outbox,
and a real node whose ``acme.>`` topics are durable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from agentcast.outbox import init_outbox
from tests.pg import PG_DSN

TOPIC = "acme.outbox.events"


@asynccontextmanager
async def pg_schema_outbox(partitions: int = 8) -> AsyncIterator[str]:
    """The DSN (``...?schema=NAME``) of a fresh outbox in a throwaway schema, dropped after."""
    schema = f"agentcast_outbox_test_{uuid.uuid4().hex[:12]}"
    dsn = f"{PG_DSN}?schema={schema}"
    await init_outbox(dsn, partitions=partitions)
    try:
        yield dsn
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def pg_outbox() -> AsyncIterator[str]:
    """A fresh PostgreSQL outbox."""
    async with pg_schema_outbox() as dsn:
        yield dsn


@pytest.fixture
async def sqlite_outbox(tmp_path: Path) -> str:
    """The DSN of a fresh outbox in a SQLite file."""
    dsn = f"sqlite:///{tmp_path}/app.db"
    await init_outbox(dsn, partitions=8)
    return dsn


@pytest.fixture(params=["postgres", "sqlite"])
async def outbox_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An outbox on each backend in turn."""
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path}/app.db"
        await init_outbox(dsn, partitions=8)
        yield dsn
        return
    async with pg_schema_outbox() as dsn:
        yield dsn


def node_config(history: str) -> ServerConfig:
    return ServerConfig(
        port=0,
        http_port=0,
        history=history,
        durable=(DurableRule("acme.>", max_events=100_000),),
        retention_interval=3600,
    )


@pytest.fixture
async def dnode(tmp_path: Path) -> AsyncIterator[Node]:
    """A node keeping ``acme.>`` in a SQLite history."""
    async with Node(node_config(f"sqlite:///{tmp_path}/history.db")) as node:
        yield node
