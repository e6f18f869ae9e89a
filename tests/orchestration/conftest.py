"""Fixtures for workflows: a store on each database, a node whose ``t.>`` topics are durable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.pg import PG_DSN


@pytest.fixture(params=["sqlite", "postgres"])
async def wf_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A workflow database on each backend in turn (a SQLite file, a throwaway schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/workflows.db"
        return
    schema = f"agentcast_wf_test_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def durable_config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        port=0,
        http_port=0,
        history=f"sqlite:///{tmp_path}/history.db",
        durable=(DurableRule("t.>", max_events=100_000),),
        retention_interval=3600,
    )


@pytest.fixture
async def dnode(tmp_path: Path) -> AsyncIterator[Node]:
    """A node keeping ``t.>`` in a SQLite history."""
    async with Node(durable_config(tmp_path)) as node:
        yield node
