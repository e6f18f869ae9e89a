"""``PostgresOutboxStore``: the relay's side of an outbox in PostgreSQL (asyncpg).

Woken by ``LISTEN`` on the outbox channel (the insert trigger's ``pg_notify``, which
PostgreSQL coalesces to one notification per channel and transaction), with polling as the
fallback. All lease arithmetic uses the database clock (``now()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import orjson

from agentcast.outbox.schema import pg_channel, pg_prefix
from agentcast.outbox.store import OutboxRow


class PostgresOutboxStore:
    """An outbox in PostgreSQL at ``dsn`` (libpq URL), tables in ``schema``."""

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self.partitions = 0
        self._p = pg_prefix(schema)
        self._channel = pg_channel(schema)
        self._conn: Any = None
        self._wake = asyncio.Event()

    async def open(self) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        self.partitions = int(
            await self._conn.fetchval(
                f"SELECT value FROM {self._p}agentcast_outbox_meta WHERE name = 'partitions'"
            )
        )
        await self._conn.add_listener(self._channel, self._notified)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2.0)

    async def balance(self, relay: str, ttl: float) -> frozenset[int]:
        p = self._p
        conn = self._conn
        async with conn.transaction():
            await conn.execute(
                f"""INSERT INTO {p}agentcast_outbox_relays VALUES
                    ($1, now() + make_interval(secs => $2))
                    ON CONFLICT (relay) DO UPDATE SET alive_until = EXCLUDED.alive_until""",
                relay,
                ttl,
            )
            live = await conn.fetchval(
                f"SELECT count(*) FROM {p}agentcast_outbox_relays WHERE alive_until > now()"
            )
            target = math.ceil(self.partitions / max(1, int(live)))
            rows = await conn.fetch(
                f"""UPDATE {p}agentcast_outbox_partitions
                    SET lease_until = now() + make_interval(secs => $2)
                    WHERE owner = $1 AND lease_until > now() RETURNING partition""",
                relay,
                ttl,
            )
            held = sorted(int(r[0]) for r in rows)
            if len(held) > target:
                extra = held[target:]
                held = held[:target]
                await conn.execute(
                    f"""UPDATE {p}agentcast_outbox_partitions SET owner = NULL,
                        lease_until = NULL WHERE owner = $1 AND partition = ANY($2::int[])""",
                    relay,
                    extra,
                )
            elif len(held) < target:
                rows = await conn.fetch(
                    f"""UPDATE {p}agentcast_outbox_partitions
                        SET owner = $1, lease_until = now() + make_interval(secs => $2)
                        WHERE partition IN (
                            SELECT partition FROM {p}agentcast_outbox_partitions
                            WHERE owner IS NULL OR lease_until IS NULL OR lease_until <= now()
                            ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)
                        RETURNING partition""",
                    relay,
                    ttl,
                    target - len(held),
                )
                held += [int(r[0]) for r in rows]
            await conn.execute(
                f"""DELETE FROM {p}agentcast_outbox_relays
                    WHERE alive_until < now() - interval '1 minute'"""
            )
        return frozenset(held)

    async def renew(self, relay: str, ttl: float, ids: list[int]) -> frozenset[int]:
        p = self._p
        conn = self._conn
        async with conn.transaction():
            await conn.execute(
                f"""UPDATE {p}agentcast_outbox_relays
                    SET alive_until = now() + make_interval(secs => $2) WHERE relay = $1""",
                relay,
                ttl,
            )
            rows = await conn.fetch(
                f"""UPDATE {p}agentcast_outbox_partitions
                    SET lease_until = now() + make_interval(secs => $2)
                    WHERE owner = $1 AND lease_until > now() RETURNING partition""",
                relay,
                ttl,
            )
            await conn.execute(
                f"""UPDATE {p}agentcast_outbox o SET lease_until = pt.lease_until
                    FROM {p}agentcast_outbox_partitions pt
                    WHERE o.id = ANY($2::bigint[]) AND o.claimed_by = $1
                      AND o.published_at IS NULL AND o.lease_until > now()
                      AND pt.partition = o.key_hash % $3 AND pt.owner = $1""",
                relay,
                ids,
                self.partitions,
            )
        return frozenset(int(r[0]) for r in rows)

    async def release(self, relay: str) -> None:
        p = self._p
        async with self._conn.transaction():
            await self._conn.execute(
                f"""UPDATE {p}agentcast_outbox_partitions SET owner = NULL, lease_until = NULL
                    WHERE owner = $1""",
                relay,
            )
            await self._conn.execute(
                f"DELETE FROM {p}agentcast_outbox_relays WHERE relay = $1", relay
            )

    async def claim(self, relay: str, limit: int) -> list[OutboxRow]:
        p = self._p
        conn = self._conn
        async with conn.transaction():
            # Walk the pending index in id order, keeping rows of held partitions: no join,
            # so the cost follows ``limit``, not the backlog.
            held = await conn.fetch(
                f"""SELECT partition FROM {p}agentcast_outbox_partitions
                    WHERE owner = $1 AND lease_until > now()""",
                relay,
            )
            if not held:
                return []
            # Queue tables have stale statistics; a bitmap scan plus sort would read the whole
            # backlog on every claim. Walk the pending index in id order instead.
            await conn.execute(
                "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off;"
                " SET LOCAL enable_sort = off"
            )
            rows = await conn.fetch(
                f"""SELECT id, key_hash % $3 AS partition, topic, key,
                        payload::text AS payload, headers::text AS headers,
                        correlation_id, causation_id,
                        extract(epoch FROM created_at)::float8 AS created_at,
                        (claimed_by IS NOT NULL AND claimed_by <> $1
                         AND lease_until > now()) AS foreign_lease
                    FROM {p}agentcast_outbox
                    WHERE published_at IS NULL AND key_hash % $3 = ANY($4::int[])
                    ORDER BY id LIMIT $2
                    FOR UPDATE""",
                relay,
                limit,
                self.partitions,
                [int(r[0]) for r in held],
            )
            blocked: set[int] = set()
            claimed: list[OutboxRow] = []
            for r in rows:
                partition = int(r["partition"])
                if partition in blocked or r["foreign_lease"]:
                    blocked.add(partition)
                    continue
                claimed.append(_row(r, partition))
            if claimed:
                await conn.execute(
                    f"""UPDATE {p}agentcast_outbox o SET claimed_by = $1,
                            lease_until = pt.lease_until, attempts = o.attempts + 1
                        FROM {p}agentcast_outbox_partitions pt
                        WHERE o.id = ANY($2::bigint[]) AND pt.partition = o.key_hash % $3""",
                    relay,
                    [row.id for row in claimed],
                    self.partitions,
                )
        return claimed

    async def mark_published(self, relay: str, ids: list[int]) -> list[int]:
        if not ids:
            return []
        p = self._p
        rows = await self._conn.fetch(
            f"""UPDATE {p}agentcast_outbox o SET published_at = clock_timestamp(),
                    claimed_by = NULL, lease_until = NULL
                FROM {p}agentcast_outbox_partitions pt
                WHERE o.id = ANY($2::bigint[]) AND o.published_at IS NULL
                  AND o.claimed_by = $1 AND o.lease_until > now()
                  AND pt.partition = o.key_hash % $3 AND pt.owner = $1
                  AND pt.lease_until > now()
                RETURNING o.id""",
            relay,
            ids,
            self.partitions,
        )
        return [int(r[0]) for r in rows]

    async def oldest_unpublished_age(self) -> float | None:
        age = await self._conn.fetchval(
            f"""SELECT extract(epoch FROM clock_timestamp() - created_at)::float8
                FROM {self._p}agentcast_outbox WHERE published_at IS NULL
                ORDER BY id LIMIT 1"""
        )
        return None if age is None else max(0.0, float(age))

    async def purge(self, older_than: float, limit: int) -> int:
        p = self._p
        deleted = await self._conn.fetch(
            f"""DELETE FROM {p}agentcast_outbox WHERE id IN (
                    SELECT id FROM {p}agentcast_outbox
                    WHERE published_at IS NOT NULL
                      AND published_at < now() - make_interval(secs => $1)
                    LIMIT $2)
                RETURNING id""",
            older_than,
            limit,
        )
        return len(deleted)

    async def wait_for_rows(self, max_wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max_wait)
        self._wake.clear()


def _row(r: Any, partition: int) -> OutboxRow:
    headers = r["headers"]
    return OutboxRow(
        id=int(r["id"]),
        partition=partition,
        topic=str(r["topic"]),
        key=r["key"],
        payload=None if r["payload"] is None else orjson.loads(r["payload"]),
        headers=None if headers is None else dict(orjson.loads(headers)),
        correlation_id=r["correlation_id"],
        causation_id=r["causation_id"],
        created_at=float(r["created_at"]),
    )
