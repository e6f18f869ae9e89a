"""Fixtures for workflows: a store on each database, a node whose ``t.>`` topics are durable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.pg import pg_history_url


@pytest.fixture(params=["sqlite", "postgres"])
async def wf_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A workflow database on each backend in turn (a SQLite file, a throwaway schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/workflows.db"
        return
    async with pg_history_url() as dsn:
        yield dsn


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
