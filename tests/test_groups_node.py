"""Consumer groups through a real node: competing consumers, acks, redelivery, nack,
dead letters, rebalancing, and progress that survives a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentcast.config import ServerConfig
from agentcast.hub.config import HubConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.pg import pg_history_url
from tests.wsclient import RawClient

RULES = (DurableRule("acme.>"),)


def config(history: str) -> ServerConfig:
    return ServerConfig(
        port=0,
        http_port=0,
        history=history,
        durable=RULES,
        retention_interval=3600,
        hub=HubConfig(group_ack_timeout=30),
    )


@pytest.fixture
async def gnode() -> AsyncIterator[Node]:
    async with Node(config("memory")) as node:
        yield node


async def next_delivery(client: RawClient) -> dict[str, Any]:
    message = await client.next_event_message()
    assert "group" in message and "attempt" in message, message
    return message


async def join(client: RawClient, **options: Any) -> dict[str, Any]:
    reply = await client.call("subscribe", topic="acme.jobs", group="workers", **options)
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def publish(client: RawClient, n: int, start: int = 0, **kw: Any) -> None:
    for i in range(start, start + n):
        reply = await client.call("publish", topic="acme.jobs", payload=i, **kw)
        assert reply["ok"], reply


async def test_members_share_the_work_and_every_event_is_acked_once(gnode: Node) -> None:
    a, b = await RawClient.open(gnode.ws_url), await RawClient.open(gnode.ws_url)
    await join(a, max_in_flight=4)
    await join(b)
    pub = await RawClient.open(gnode.ws_url)
    seen: dict[int, str] = {}
    all_seen = asyncio.Event()

    async def work(name: str, client: RawClient) -> None:
        while True:
            seq = (await next_delivery(client))["event"]["seq"]
            assert seq not in seen, f"{seq} delivered twice"
            seen[seq] = name
            await client.send(cmd="ack", topic="acme.jobs", group="workers", seq=seq)
            if len(seen) == 40:
                all_seen.set()

    workers = [asyncio.ensure_future(work(n, c)) for n, c in (("a", a), ("b", b))]
    await publish(pub, 40)
    await all_seen.wait()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert sorted(seen) == list(range(1, 41))
    assert set(seen.values()) == {"a", "b"}


async def test_unacked_event_is_redelivered_after_the_ack_timeout(gnode: Node) -> None:
    worker = await RawClient.open(gnode.ws_url)
    await join(worker, ack_timeout=0.2, max_in_flight=1)
    pub = await RawClient.open(gnode.ws_url)
    await publish(pub, 1)
    first = await next_delivery(worker)
    again = await next_delivery(worker)  # no ack: the sweep gives it back
    assert first["event"]["id"] == again["event"]["id"]
    assert (first["attempt"], again["attempt"]) == (1, 2)
    assert (await worker.call("ack", topic="acme.jobs", group="workers", seq=1))["ok"]


async def test_nack_requeues_and_max_deliver_dead_letters_with_the_reason(gnode: Node) -> None:
    watcher = await RawClient.open(gnode.ws_url)
    await watcher.call("subscribe", topic="acme.dead-letter.workers")
    worker = await RawClient.open(gnode.ws_url)
    await join(worker, max_deliver=2, max_in_flight=1)
    pub = await RawClient.open(gnode.ws_url)
    await publish(pub, 2)
    for attempt in (1, 2):
        message = await next_delivery(worker)
        assert (message["event"]["seq"], message["attempt"]) == (1, attempt)
        reply = await worker.call(
            "nack", topic="acme.jobs", group="workers", seq=1, reason="tool crashed"
        )
        assert reply["ok"]
    dead = await watcher.next_event()
    assert dead["payload"]["seq"] == 1 and dead["payload"]["attempts"] == 2
    assert dead["payload"]["reason"] == "nack: tool crashed"
    assert dead["payload"]["event"]["payload"] == 0
    assert dead["headers"]["reason"] == "nack: tool crashed"
    message = await next_delivery(worker)
    assert message["event"]["seq"] == 2
    async with aiohttp.ClientSession() as http, http.get(f"{gnode.http_url}/metrics") as resp:
        text = await resp.text()
    assert "agentcast_group_dead_letters_total 1.0" in text
    assert "agentcast_group_deliveries_total 3.0" in text
    assert "agentcast_group_in_flight 1.0" in text
    assert "agentcast_durable_appended_total 3.0" in text  # two jobs and one dead letter


async def test_a_leaving_member_hands_its_deliveries_to_the_others(gnode: Node) -> None:
    a, b = await RawClient.open(gnode.ws_url), await RawClient.open(gnode.ws_url)
    await join(a, max_in_flight=2)
    pub = await RawClient.open(gnode.ws_url)
    await publish(pub, 2)
    held = {(await next_delivery(a))["event"]["seq"] for _ in range(2)}
    assert held == {1, 2}
    await join(b)
    await a.close()
    got = {(await next_delivery(b))["event"]["seq"] for _ in range(2)}
    assert got == {1, 2}


async def test_ack_errors_are_precise(gnode: Node) -> None:
    worker = await RawClient.open(gnode.ws_url)
    reply = await worker.call("ack", topic="acme.jobs", group="workers", seq=1)
    assert reply["error"]["code"] == "not_in_flight"
    await join(worker)
    reply = await worker.call("ack", topic="acme.jobs", group="workers", seq=99)
    assert reply["error"]["code"] == "not_in_flight"
    reply = await worker.call("subscribe", topic="other.x", group="workers")
    assert reply["error"]["code"] == "not_durable"
    reply = await worker.call("subscribe", topic="acme.*", group="workers")
    assert reply["error"]["code"] == "unsupported"
    reply = await worker.call("unsubscribe", topic="acme.jobs", group="nobody")
    assert reply["error"]["code"] == "not_subscribed"
    assert (await worker.call("unsubscribe", topic="acme.jobs", group="workers"))["ok"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis", "nats"])
async def test_ack_floor_survives_a_restart(tmp_path: Path, backend: str) -> None:
    if backend == "sqlite":
        await check_floor_survives_restart(config(f"sqlite:///{tmp_path}/h.db"))
    elif backend == "postgres":
        async with pg_history_url() as url:
            await check_floor_survives_restart(config(url))
    elif backend == "redis":
        prefix = f"t{uuid.uuid4().hex[:12]}"
        try:
            await check_floor_survives_restart(config(f"redis://127.0.0.1:6379/0?prefix={prefix}"))
        finally:
            await delete_redis_prefix(prefix)
    else:
        stream = f"T{uuid.uuid4().hex[:12]}"
        try:
            await check_floor_survives_restart(config(f"nats://127.0.0.1:4222?stream={stream}"))
        finally:
            await delete_nats_stream(stream)


async def delete_redis_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}*")]
        keys += [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def delete_nats_stream(stream: str) -> None:
    import contextlib

    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        js = nc.jetstream()
        for name in (stream, f"KV_{stream}-keys", f"KV_{stream}-groups"):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def check_floor_survives_restart(cfg: ServerConfig) -> None:
    async with Node(cfg) as node:
        pub = await RawClient.open(node.ws_url)
        await publish(pub, 10)
        worker = await RawClient.open(node.ws_url)
        await join(worker, max_in_flight=10)
        for _ in range(10):
            seq = (await next_delivery(worker))["event"]["seq"]
            if seq <= 6:
                await worker.call("ack", topic="acme.jobs", group="workers", seq=seq)
    async with Node(cfg) as node:
        worker = await RawClient.open(node.ws_url)
        result = await join(worker, max_in_flight=10)
        assert result["floor"] == 6
        again = sorted([(await next_delivery(worker))["event"]["seq"] for _ in range(4)])
        assert again == [7, 8, 9, 10]


async def test_joining_twice_at_once_makes_one_member(tmp_path: Path) -> None:
    async with Node(config(f"sqlite:///{tmp_path}/h.db")) as node:
        pub = await RawClient.open(node.ws_url)
        await publish(pub, 2)
        worker = await RawClient.open(node.ws_url)
        for command_id in ("j1", "j2"):
            await worker.send(id=command_id, cmd="subscribe", topic="acme.jobs", group="workers")
        assert node.hub is not None and node.hub.groups is not None
        replies = []
        while len(replies) < 2:
            message = await worker.recv()
            if message["type"] == "reply":
                replies.append(message)
            else:
                worker.pending_events.append(message)
        assert all(r["ok"] for r in replies)
        runner = node.hub.groups.runners[("acme.jobs", "workers")]
        assert len(runner.group.members) == 1
        for _ in range(2):
            seq = (await next_delivery(worker))["event"]["seq"]
            assert (await worker.call("ack", topic="acme.jobs", group="workers", seq=seq))["ok"]
