"""``Relay``: publish committed outbox rows to an agentcast node, in order, at least once.

One relay cycle:

1. every ``lease / 3`` seconds, :meth:`OutboxStore.balance` renews the relay's partition
   leases and rebalances partitions over the live relays (nothing is in flight then;
   while a batch is being published, :meth:`OutboxStore.renew` extends the partition and
   row leases without rebalancing);
2. a short claim transaction leases up to ``batch_size`` unpublished rows of the held
   partitions, in id order (``published_at IS NULL``: no cursor, so a row whose
   transaction commits late is still found);
3. outside any transaction, each partition's rows are published in id order (partitions in
   parallel), each with idempotency key ``key_prefix + str(id)``: ``pipeline`` publishes
   in flight at a time, issued in order on one connection (the SDK sends and resends in
   issue order); ``pipeline=1`` waits for each ack before the next. The first failed
   publish stops its partition for this cycle (counted in ``retries``);
4. the rows the node accepted are marked published, only while the relay still holds their
   leases.

A relay that dies between 3 and 4 leaves rows unpublished; whoever holds the partition next
publishes them again with the same idempotency key, and the node answers ``duplicate``
instead of delivering them twice (within its dedupe window, kept in the history store for
durable topics).

Order: with ``pipeline=1`` the first acceptance of each row happens in id order, even if two
relays ever overlap on a partition. With ``pipeline > 1`` the same holds as long as the node
accepts or drops publishes in the order they arrive; a publish the node refuses with
``overloaded``/``unavailable`` and the SDK retries may land after a later row of its window
(see docs/outbox.md).

Between cycles the relay waits for a notification (PostgreSQL ``LISTEN``) or
``poll_interval``. Every ``purge_interval`` it deletes rows published more than
``retention`` seconds ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict

from agentcast.client import Client
from agentcast.errors import ConnectionClosed
from agentcast.outbox.dsn import parse_dsn
from agentcast.outbox.metrics import RelayMetrics
from agentcast.outbox.store import OutboxRow, OutboxStore

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 2000
DEFAULT_PIPELINE = 32
DEFAULT_LEASE = 10.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_PURGE_INTERVAL = 60.0
LAG_INTERVAL = 1.0  # seconds between lag measurements while busy
PURGE_BATCH = 5_000
MAX_PURGE_BATCHES = 20


def open_store(dsn: str) -> OutboxStore:
    """The :class:`OutboxStore` for ``dsn`` (not yet opened)."""
    parsed = parse_dsn(dsn)
    if parsed.kind == "sqlite":
        from agentcast.outbox.sqlite import SqliteOutboxStore

        return SqliteOutboxStore(parsed.target)
    from agentcast.outbox.postgres import PostgresOutboxStore

    return PostgresOutboxStore(parsed.target, parsed.schema)


class Relay:
    """Publishes the outbox in ``store`` to the node at ``node_url``.

    Use :meth:`run` until ``stop`` is set (inside a node or a script), or :meth:`cycle` to
    drive it step by step. ``lease`` is the partition (and row) lease in seconds: a relay that
    dies holds its partitions that long at most. Counters: :attr:`published`,
    :attr:`retries`, and the Prometheus families of :attr:`metrics`.
    """

    def __init__(
        self,
        store: OutboxStore,
        node_url: str,
        *,
        name: str | None = None,
        token: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lease: float = DEFAULT_LEASE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        retention: float = DEFAULT_RETENTION,
        purge_interval: float = DEFAULT_PURGE_INTERVAL,
        key_prefix: str = "outbox:",
        pipeline: int = DEFAULT_PIPELINE,
        ack_timeout: float = 10.0,
        metrics: RelayMetrics | None = None,
    ) -> None:
        if batch_size < 1 or pipeline < 1 or lease <= 0 or poll_interval <= 0 or retention < 0:
            raise ValueError("batch_size, pipeline, lease and poll_interval must be positive")
        self.store = store
        self.node_url = node_url
        self.relay_id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token = token
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.retention = retention
        self.purge_interval = purge_interval
        self.key_prefix = key_prefix
        self.pipeline = pipeline
        self.ack_timeout = ack_timeout
        self.metrics = metrics if metrics is not None else RelayMetrics()
        self.published = 0
        self.retries = 0
        self.held: frozenset[int] = frozenset()
        self._client: Client | None = None
        self._client_broken = False
        self._next_balance = 0.0
        self._next_purge = 0.0
        self._next_lag = 0.0
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Cut the current wait short: rows were just committed (for writers in the same
        process, where no database notification exists, e.g. on SQLite)."""
        self._nudged.set()

    @classmethod
    def from_dsn(cls, dsn: str, node_url: str, **options: object) -> Relay:
        """A relay over the outbox at ``dsn`` (``postgresql://...`` or ``sqlite:///...``)."""
        return cls(open_store(dsn), node_url, **options)  # type: ignore[arg-type]

    async def __aenter__(self) -> Relay:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, release: bool = True) -> None:
        """Give up the leases (if ``release``), close the client and the store."""
        if release:
            with contextlib.suppress(Exception):
                await self.store.release(self.relay_id)
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()
        await self.store.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Open the store, relay until ``stop`` is set, then release and close."""
        await self.store.open()
        try:
            while not stop.is_set():
                try:
                    moved = await self.cycle()
                except (OSError, ConnectionError) as exc:
                    log.warning("outbox relay cycle failed: %s", exc)
                    moved = 0
                    await self._wait(stop, self.poll_interval, rows=False)
                    continue
                if moved < self.batch_size:
                    await self._wait(stop, self.poll_interval, rows=True)
        finally:
            await self.close()

    async def _wait(self, stop: asyncio.Event, max_wait: float, *, rows: bool) -> None:
        max_wait = max(0.0, min(max_wait, self._next_balance - time.monotonic()))
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
        if rows:
            waits.add(asyncio.ensure_future(self.store.wait_for_rows(max_wait)))
            waits.add(asyncio.ensure_future(self._nudged.wait()))
        try:
            await asyncio.wait(waits, timeout=max_wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits:
                fut.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            self._nudged.clear()

    async def cycle(self) -> int:
        """One balance (when due) + claim + publish + mark; return the rows claimed."""
        now = time.monotonic()
        if now >= self._next_balance:
            self.held = await self.store.balance(self.relay_id, self.lease)
            self.metrics.partitions.set(len(self.held))
            self._next_balance = now + self.lease / 3
        rows = await self.store.claim(self.relay_id, self.batch_size) if self.held else []
        if rows:
            published = asyncio.Event()
            keeper = asyncio.create_task(self._keep_leases([r.id for r in rows], published))
            try:
                done = await self._publish(rows)
            finally:
                published.set()
                await keeper
            marked = await self.store.mark_published(self.relay_id, done)
            self.published += len(marked)
            self.metrics.published.inc(len(marked))
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            await self.purge()
        if now >= self._next_lag or not rows:
            self._next_lag = now + LAG_INTERVAL
            age = await self.store.oldest_unpublished_age()
            self.metrics.lag.set(0.0 if age is None else age)
        return len(rows)

    async def _keep_leases(self, ids: list[int], published: asyncio.Event) -> None:
        """Renew the partition and row leases every ``lease / 3`` seconds until
        ``published`` is set, so a slow batch does not lose them mid-publish."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(published.wait(), self.lease / 3)
                return
            self.held = await self.store.renew(self.relay_id, self.lease, ids)
            self._next_balance = time.monotonic() + self.lease / 3

    async def purge(self) -> int:
        """Delete rows published more than ``retention`` seconds ago (bounded batches)."""
        total = 0
        for _ in range(MAX_PURGE_BATCHES):
            deleted = await self.store.purge(self.retention, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
        self.metrics.purged.inc(total)
        return total

    async def _publish(self, rows: list[OutboxRow]) -> list[int]:
        try:
            client = await self._connected_client()
        except Exception as exc:
            self.retries += 1
            self.metrics.retries.inc()
            log.warning("outbox relay cannot reach %s (will retry): %r", self.node_url, exc)
            return []
        chains: dict[int, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            chains[row.partition].append(row)
        results = await asyncio.gather(*(self._chain(client, chain) for chain in chains.values()))
        return [row_id for done in results for row_id in done]

    async def _chain(self, client: Client, rows: list[OutboxRow]) -> list[int]:
        """Publish one partition's rows in id order, ``pipeline`` in flight at a time; return
        the ids of the unbroken prefix the node accepted."""
        done: list[int] = []
        for start in range(0, len(rows), self.pipeline):
            window = rows[start : start + self.pipeline]
            # Issued in order on one connection: the SDK sends (and resends) in issue order.
            results = await asyncio.gather(
                *(self._publish_row(client, row) for row in window), return_exceptions=True
            )
            for row, result in zip(window, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, ConnectionClosed):
                        self._client_broken = True
                    self.retries += 1
                    self.metrics.retries.inc()
                    log.warning("outbox row %d not published (will retry): %r", row.id, result)
                    return done
                done.append(row.id)
        return done

    async def _publish_row(self, client: Client, row: OutboxRow) -> None:
        await client.publish(
            row.topic,
            row.payload,
            headers=row.headers,
            idempotency_key=f"{self.key_prefix}{row.id}",
            correlation_id=row.correlation_id,
            causation_id=row.causation_id,
        )

    async def _connected_client(self) -> Client:
        client = self._client
        if client is not None and self._client_broken:
            self._client = None
            with contextlib.suppress(Exception):
                await client.close()
            client = None
        self._client_broken = False
        if client is None:
            client = Client(
                self.node_url,
                name=f"outbox-relay {self.relay_id}",
                token=self.token,
                ack_timeout=self.ack_timeout,
            )
            await client.connect()
            self._client = client
        return client
