"""Fixtures for the history-store suites: one factory per backend, all on real storage.

PostgreSQL is expected at ``AGENTCAST_TEST_PG_DSN`` (default: the local server, database
``test``); every test gets its own schema, dropped afterwards. An unreachable server fails
the PostgreSQL tests, it does not skip them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import asyncpg
import pytest

from agentcast.storage.base import HistoryStore
from agentcast.storage.memory import MemoryHistoryStore
from agentcast.storage.postgres import PostgresHistoryStore
from agentcast.storage.sqlite import SqliteHistoryStore
from tests.storage import nats_backend, redis_backend


class Backend(Protocol):
    """A history backend beyond the built-in three, tested by the same suite."""

    def create(self, factory: StoreFactory, dedupe_window: float) -> HistoryStore: ...

    async def cleanup(self, factory: StoreFactory) -> None: ...


# Backends on external engines register here (kind -> module implementing Backend).
EXTRA_BACKENDS: dict[str, Backend] = {}
EXTRA_BACKENDS["redis"] = redis_backend.BACKEND
EXTRA_BACKENDS["nats"] = nats_backend.BACKEND

PG_DSN = os.environ.get("AGENTCAST_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    """A clock the test moves by hand (seconds, like ``time.time``)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoreFactory:
    """Opens store instances of one backend that share one backing file or schema, so a
    second instance is what a restarted (or a second) node would see. Every instance it
    opened is closed at teardown."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.path = tmp_path / "history" / "store.db"
        self.schema = f"agentcast_test_{uuid.uuid4().hex[:16]}"
        self.opened: list[HistoryStore] = []

    def create(self, dedupe_window: float = 120.0) -> HistoryStore:
        """A new, unopened instance."""
        if self.kind in EXTRA_BACKENDS:
            return EXTRA_BACKENDS[self.kind].create(self, dedupe_window)
        if self.kind == "memory":
            return MemoryHistoryStore(dedupe_window=dedupe_window, clock=self.clock)
        if self.kind == "sqlite":
            return SqliteHistoryStore(self.path, dedupe_window=dedupe_window, clock=self.clock)
        return PostgresHistoryStore(
            PG_DSN, dedupe_window=dedupe_window, schema=self.schema, clock=self.clock
        )

    async def open(self, dedupe_window: float = 120.0) -> HistoryStore:
        store = self.create(dedupe_window)
        await store.open()
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        while self.opened:
            await self.opened.pop().close()
        if self.kind in EXTRA_BACKENDS:
            await EXTRA_BACKENDS[self.kind].cleanup(self)
        if self.kind == "postgres":
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await conn.close()


ALL_BACKENDS = ["memory", "sqlite", "postgres", *EXTRA_BACKENDS]
DURABLE_BACKENDS = ["sqlite", "postgres", *EXTRA_BACKENDS]


@pytest.fixture(params=ALL_BACKENDS)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture(params=DURABLE_BACKENDS)
async def durable_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def postgres_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory("postgres", tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def history_store(store_factory: StoreFactory) -> HistoryStore:
    """An opened store of each backend, closed (and its schema dropped) after the test."""
    return await store_factory.open()
