"""A throwaway PostgreSQL schema for node-level tests (the real local server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

PG_DSN = os.environ.get("AGENTCAST_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def pg_history_url() -> AsyncIterator[str]:
    """A PostgreSQL URL (``...?schema=NAME``) on a fresh schema, dropped afterwards (for a
    history store, a workflow store, ...)."""
    schema = f"agentcast_test_{uuid.uuid4().hex[:16]}"
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
