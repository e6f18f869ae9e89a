"""A fresh, throwaway history store for each node the durable benchmark starts.

:func:`fresh_history` yields the history URL of an empty store and removes the store when
the block ends, whatever happens:

* ``memory``: ``memory`` (nothing to remove);
* ``sqlite``: a new file in ``workdir`` (removed with its ``-wal`` and ``-shm`` files);
* ``postgres``: a new schema ``agentcast_bench_<hex>`` of ``pg_dsn`` (the node creates it;
  it is dropped through asyncpg, after checking up front that the server answers).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from agentcast.bench.children import BenchError

STORES = ("sqlite", "postgres", "memory")
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_TIMEOUT = 10.0


async def _pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=PG_TIMEOUT)
    try:
        await conn.execute(sql, timeout=PG_TIMEOUT)
    finally:
        await conn.close(timeout=PG_TIMEOUT)


def _pg(dsn: str, sql: str) -> None:
    asyncio.run(_pg_execute(dsn, sql))


@contextmanager
def fresh_history(store: str, workdir: Path, pg_dsn: str) -> Iterator[str]:
    """The URL of an empty ``store``, removed when the block ends."""
    if store == "memory":
        yield "memory"
    elif store == "sqlite":
        path = workdir / f"history-{uuid.uuid4().hex[:12]}.db"
        try:
            yield f"sqlite:///{path}"  # an absolute path: four slashes in all
        finally:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
    elif store == "postgres":
        schema = f"agentcast_bench_{uuid.uuid4().hex[:16]}"
        try:
            _pg(pg_dsn, "SELECT 1")
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BenchError(f"PostgreSQL at {pg_dsn} does not answer: {exc!r}") from None
        separator = "&" if "?" in pg_dsn else "?"
        try:
            yield f"{pg_dsn}{separator}schema={schema}"
        finally:
            try:
                _pg(pg_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                print(f"warning: could not drop schema {schema}: {exc!r}", file=sys.stderr)
    else:
        raise BenchError(f"unknown store {store!r} (one of {', '.join(STORES)})")
