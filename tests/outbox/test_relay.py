"""The relay against a real node and real PostgreSQL / SQLite outboxes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agentcast.client import Client
from agentcast.node import Node
from agentcast.outbox import Relay
from agentcast.outbox.metrics import RelayMetrics
from tests.nodeproc import free_port
from tests.outbox.appdb import AppDb
from tests.outbox.conftest import TOPIC
from tests.outbox.helpers import drain_until_sentinel


@pytest.fixture
async def app(outbox_dsn: str) -> AsyncIterator[AppDb]:
    db = await AppDb(outbox_dsn).open()
    yield db
    await db.close()


@pytest.fixture
async def reader(dnode: Node) -> AsyncIterator[Client]:
    async with Client(dnode.ws_url) as client:
        yield client


def make_relay(dsn: str, node: Node, **options: object) -> Relay:
    options.setdefault("lease", 30.0)
    return Relay.from_dsn(dsn, node.ws_url, **options)


async def relay_all(relay: Relay, limit: int = 100) -> None:
    """Cycle until no row is left to claim (bounded)."""
    for _ in range(limit):
        if await relay.cycle() == 0:
            return
    pytest.fail("the relay kept finding rows")


async def expire_leases(app: AppDb) -> None:
    """Make every partition and row lease look expired (a crashed relay's, say)."""
    past = "now() - interval '1 hour'" if app.parsed.kind == "postgres" else "0"
    await app.execute(f"UPDATE agentcast_outbox_partitions SET lease_until = {past}")
    await app.execute(f"UPDATE agentcast_outbox_relays SET alive_until = {past}")
    await app.execute(
        f"UPDATE agentcast_outbox SET lease_until = {past} WHERE claimed_by IS NOT NULL"
    )


async def test_rolled_back_transactions_publish_nothing(
    outbox_dsn: str, app: AppDb, dnode: Node, reader: Client
) -> None:
    sub = await reader.subscribe(TOPIC)
    await app.begin()
    await app.add(TOPIC, {"n": "gone-1"}, key="a")
    await app.add(TOPIC, {"n": "gone-2"}, key="b")
    await app.rollback()
    await app.begin()
    await app.add(TOPIC, {"n": "kept"}, key="a")
    await app.commit()
    async with make_relay(outbox_dsn, dnode) as relay:
        await relay_all(relay)
        assert relay.published == 1
    assert await drain_until_sentinel(reader, sub, TOPIC) == [{"n": "kept"}]


async def test_rows_published_once_in_key_order_and_marked(
    outbox_dsn: str, app: AppDb, dnode: Node, reader: Client
) -> None:
    sub = await reader.subscribe(TOPIC)
    expected = []
    for txn in range(10):
        await app.begin()
        for key in ("a", "b", "c"):
            payload = {"key": key, "txn": txn}
            await app.add(TOPIC, payload, key=key)
            expected.append(payload)
        await app.commit()
    async with make_relay(outbox_dsn, dnode, batch_size=7) as relay:
        await relay_all(relay)
        assert relay.published == 30
        assert await relay.cycle() == 0
    got = await drain_until_sentinel(reader, sub, TOPIC)
    assert sorted(got, key=lambda p: (p["key"], p["txn"])) == sorted(
        expected, key=lambda p: (p["key"], p["txn"])
    )
    for key in ("a", "b", "c"):
        assert [p["txn"] for p in got if p["key"] == key] == list(range(10))
    assert await app.scalar("SELECT count(*) FROM agentcast_outbox WHERE published_at IS NULL") == 0


async def test_republish_after_a_crash_is_deduplicated_by_the_node(
    outbox_dsn: str, app: AppDb, dnode: Node, reader: Client
) -> None:
    sub = await reader.subscribe(TOPIC)
    await app.begin()
    for n in range(5):
        await app.add(TOPIC, {"n": n}, key=f"k{n % 2}")
    await app.commit()
    crashed = make_relay(outbox_dsn, dnode)
    await crashed.store.open()
    crashed.held = await crashed.store.balance(crashed.relay_id, crashed.lease)
    rows = await crashed.store.claim(crashed.relay_id, 100)
    assert len(rows) == 5
    assert len(await crashed._publish(rows)) == 5  # published, never marked: a crash
    await crashed.close(release=False)
    await expire_leases(app)
    async with make_relay(outbox_dsn, dnode) as relay:
        await relay_all(relay)
        assert relay.published == 5
    got = await drain_until_sentinel(reader, sub, TOPIC)
    assert sorted(p["n"] for p in got) == [0, 1, 2, 3, 4]


async def test_marking_needs_the_lease_still_held(outbox_dsn: str, app: AppDb, dnode: Node) -> None:
    await app.begin()
    await app.add(TOPIC, {"n": 1}, key="a")
    await app.commit()
    async with make_relay(outbox_dsn, dnode) as slow, make_relay(outbox_dsn, dnode) as other:
        slow.held = await slow.store.balance(slow.relay_id, slow.lease)
        rows = await slow.store.claim(slow.relay_id, 10)
        assert [r.payload for r in rows] == [{"n": 1}]
        await expire_leases(app)
        other.held = await other.store.balance(other.relay_id, other.lease)
        assert other.held
        assert await slow.store.mark_published(slow.relay_id, [rows[0].id]) == []
        await relay_all(other)
        assert other.published == 1


async def test_partitions_are_shared_and_disjoint(outbox_dsn: str, dnode: Node) -> None:
    async with make_relay(outbox_dsn, dnode) as a, make_relay(outbox_dsn, dnode) as b:
        first = await a.store.balance(a.relay_id, 30.0)
        assert first == frozenset(range(8))
        assert await b.store.balance(b.relay_id, 30.0) == frozenset()  # nothing free yet
        shrunk = await a.store.balance(a.relay_id, 30.0)
        grown = await b.store.balance(b.relay_id, 30.0)
        assert len(shrunk) == len(grown) == 4
        assert shrunk.isdisjoint(grown)
        await a.store.release(a.relay_id)
        assert await b.store.balance(b.relay_id, 30.0) == frozenset(range(8))


async def test_retention_deletes_only_old_published_rows(
    outbox_dsn: str, app: AppDb, dnode: Node
) -> None:
    await app.begin()
    for n in range(6):
        await app.add(TOPIC, {"n": n}, key="a")
    await app.commit()
    async with make_relay(outbox_dsn, dnode, retention=3600.0) as relay:
        await relay_all(relay)
        if app.parsed.kind == "postgres":
            aged = "published_at - interval '2 hours'"
        else:
            aged = "published_at - 7200"
        await app.execute(f"UPDATE agentcast_outbox SET published_at = {aged} WHERE id <= 4")
        await app.begin()
        await app.add(TOPIC, {"n": "pending"}, key="a")
        await app.commit()
        assert await relay.purge() == 4
        assert await relay.purge() == 0
    assert await app.scalar("SELECT count(*) FROM agentcast_outbox") == 3


async def test_metrics_lag_published_and_retries(outbox_dsn: str, app: AppDb, dnode: Node) -> None:
    await app.begin()
    await app.add(TOPIC, {"n": 1}, key="a")
    await app.commit()
    dead = Relay.from_dsn(
        outbox_dsn, f"ws://127.0.0.1:{free_port()}/v1/ws", lease=30.0, ack_timeout=0.5
    )
    async with dead:
        assert await dead.cycle() == 1
        assert dead.published == 0
        assert dead.retries >= 1
        assert dead.metrics.lag._value.get() > 0
    await expire_leases(app)
    metrics = RelayMetrics()
    async with make_relay(outbox_dsn, dnode, metrics=metrics) as relay:
        await relay_all(relay)
    assert metrics.registry.get_sample_value("agentcast_outbox_published_total") == 1
    assert metrics.registry.get_sample_value("agentcast_outbox_lag_seconds") == 0


async def test_run_loop_delivers_and_stops(
    outbox_dsn: str, app: AppDb, dnode: Node, reader: Client
) -> None:
    sub = await reader.subscribe(TOPIC)
    # With PostgreSQL the poll interval is an hour: only the notification can wake it.
    poll = 3600.0 if app.parsed.kind == "postgres" else 0.05
    relay = make_relay(outbox_dsn, dnode, poll_interval=poll, lease=3600.0)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        for n in range(3):
            await app.begin()
            await app.add(TOPIC, {"n": n}, key="a")
            await app.commit()
            async with asyncio.timeout(20):
                event = await sub.get()
            assert event.payload == {"n": n}
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await running
    assert running.exception() is None
    assert relay.published == 3


async def test_renew_extends_partition_and_row_leases(
    outbox_dsn: str, app: AppDb, dnode: Node
) -> None:
    await app.begin()
    await app.add(TOPIC, {"n": 1}, key="a")
    await app.commit()
    async with make_relay(outbox_dsn, dnode) as relay:
        held = await relay.store.balance(relay.relay_id, 30.0)
        rows = await relay.store.claim(relay.relay_id, 10)
        assert await relay.store.renew(relay.relay_id, 7200.0, [rows[0].id]) == held
        if app.parsed.kind == "postgres":
            far = "now() + interval '1 hour'"
        else:
            far = "unixepoch('now') + 3600"
        assert (
            await app.scalar(f"SELECT count(*) FROM agentcast_outbox WHERE lease_until > {far}")
            == 1
        )
        assert await app.scalar(
            f"SELECT count(*) FROM agentcast_outbox_partitions WHERE lease_until > {far}"
        ) == len(held)
        assert await relay.store.mark_published(relay.relay_id, [rows[0].id]) == [rows[0].id]
