"""PostgreSQL commit order: late commits are not skipped, and one key's rows follow the
order in which their transactions committed."""

from __future__ import annotations

import asyncio

import asyncpg

from agentcast.client import Client
from agentcast.node import Node
from agentcast.outbox import Relay
from tests.outbox.appdb import AppDb
from tests.outbox.conftest import TOPIC
from tests.outbox.helpers import drain_until_sentinel
from tests.pg import PG_DSN


async def relay_all(relay: Relay) -> int:
    for _ in range(100):
        if await relay.cycle() == 0:
            return relay.published
    raise AssertionError("the relay kept finding rows")


async def test_a_transaction_committing_late_is_still_published(
    pg_outbox: str, dnode: Node
) -> None:
    t1, t2 = await AppDb(pg_outbox).open(), await AppDb(pg_outbox).open()
    async with Client(dnode.ws_url) as reader, Relay.from_dsn(pg_outbox, dnode.ws_url) as relay:
        sub = await reader.subscribe(TOPIC)
        await t1.begin()
        first = await t1.add(TOPIC, {"from": "t1"}, key="a")
        await t2.begin()
        second = await t2.add(TOPIC, {"from": "t2"}, key="b")
        assert first < second
        await t2.commit()
        await relay_all(relay)
        assert await drain_until_sentinel(reader, sub, TOPIC) == [{"from": "t2"}]
        await t1.commit()
        await relay_all(relay)
        assert await drain_until_sentinel(reader, sub, TOPIC) == [{"from": "t1"}]
        assert relay.published == 2
    await t1.close()
    await t2.close()


async def lock_waiters(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    return int(value)


async def test_one_key_is_published_in_commit_order(pg_outbox: str, dnode: Node) -> None:
    """T1 adds key k and stays open; T2's add of k waits for T1's commit, so T2's row gets a
    later id and is published after T1's, never before it."""
    t1, t2 = await AppDb(pg_outbox).open(), await AppDb(pg_outbox).open()
    observer = await asyncpg.connect(PG_DSN)
    async with Client(dnode.ws_url) as reader, Relay.from_dsn(pg_outbox, dnode.ws_url) as relay:
        sub = await reader.subscribe(TOPIC)
        await t1.begin()
        await t1.add(TOPIC, {"from": "t1"}, key="k")
        await t2.begin()
        blocked = asyncio.create_task(t2.add(TOPIC, {"from": "t2"}, key="k"))
        # PostgreSQL has no event for "a backend started waiting on a lock": poll pg_locks
        # (bounded by the timeout).
        async with asyncio.timeout(20):
            while await lock_waiters(observer) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert not blocked.done()
        await relay_all(relay)
        assert relay.published == 0  # nothing of k is visible yet
        await t1.commit()
        await blocked
        await t2.commit()
        await relay_all(relay)
        assert await drain_until_sentinel(reader, sub, TOPIC) == [{"from": "t1"}, {"from": "t2"}]
    await observer.close()
    await t1.close()
    await t2.close()
