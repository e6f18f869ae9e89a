"""A broker restart while nodes run: readiness degrades and recovers, and every
acknowledged durable event still reaches a subscriber on another node, in order.

Each test runs its own broker server on a free loopback port (``kill -9`` and restart),
so the machine's shared Redis and NATS are never disturbed.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from agentcast.client import Client, Envelope
from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.nodeproc import free_port

TOPIC = "acme.outage.stream"
SERVERS: dict[str, Callable[[int, Path], list[str]]] = {
    "redis": lambda port, d: [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(d),
    ],
    "nats": lambda port, d: ["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port)],
}
URLS = {"redis": "redis://127.0.0.1:{port}/0", "nats": "nats://127.0.0.1:{port}"}


class BrokerServer:
    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._spawn()
        for _ in range(200):  # until it accepts connections
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError(f"{self.kind} did not start")

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            SERVERS[self.kind](self.port, self.directory),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


async def wait_ready(http: aiohttp.ClientSession, node: Node, expected: int) -> None:
    for _ in range(300):  # the node learns the broker's state from its client
        async with http.get(f"{node.http_url}/readyz") as resp:
            if resp.status == expected:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {expected}")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(SERVERS))
async def test_broker_restart_degrades_readiness_and_loses_nothing_acked(
    tmp_path: Path, kind: str
) -> None:
    broker = BrokerServer(kind, tmp_path)
    await broker.start()
    config = ServerConfig(
        port=0,
        http_port=0,
        history=f"sqlite:///{tmp_path}/shared.db",
        durable=(DurableRule("acme.>"),),
        broker=URLS[kind].format(port=broker.port),
        cluster_heartbeat=0.1,
    )
    try:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(Node(config))
            b = await stack.enter_async_context(Node(config))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            sub_client = await stack.enter_async_context(Client(a.ws_url, name="sub"))
            pub = await stack.enter_async_context(Client(b.ws_url, name="pub"))
            sub = await sub_client.subscribe(TOPIC)
            got: list[Envelope] = []

            async def publish(values: range) -> None:
                for n in values:
                    await pub.publish(TOPIC, n)

            async def receive(count: int) -> None:
                while len(got) < count:
                    got.append(await sub.get())

            assert a.hub is not None and a.hub.cluster is not None
            link = a.hub.cluster
            async with asyncio.timeout(10):
                await link.wait_until(lambda: b.node_id in link.live_members())
            await publish(range(0, 50))
            await asyncio.wait_for(receive(50), 30)

            broker.kill()
            await wait_ready(http, a, 503)
            await publish(range(50, 100))  # acked: stored, but no live path to node a
            await broker.start()
            await wait_ready(http, a, 200)
            await wait_ready(http, b, 200)
            await publish(range(100, 150))  # the first of these makes a fill the gap
            await asyncio.wait_for(receive(150), 30)
            assert [e.payload for e in got] == list(range(150))
            assert [e.seq for e in got] == list(range(1, 151))
    finally:
        broker.kill()
