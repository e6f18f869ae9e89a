"""Two nodes linked by a private broker, with durable traffic across them, for the broker
scenarios.

:func:`cluster` starts a private ``redis-server`` or ``nats-server`` on a free port (with a
:class:`~agentcast.chaos.proxy.FaultProxy` in front of it when asked), and two
``agentcast serve`` nodes sharing one SQLite history file; everything is stopped on exit.
:func:`cross_traffic` publishes numbered durable events on node ``b`` while one subscriber
on each node records them, runs the scenario's fault in the middle, keeps traffic flowing
for a tail period after it, and waits until every acked event has arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from agentcast.chaos.invariants import Verdict
from agentcast.chaos.processes import BrokerProcess, NodeProcess
from agentcast.chaos.proxy import FaultProxy
from agentcast.chaos.recorder import Recorder
from agentcast.chaos.scenarios.common import background, client, expect, node_config
from agentcast.client import Position

RATE = 100.0  # events/s
SETTLE = 60.0
READY_ATTEMPTS = 600  # x 0.05 s: how long a node may take to report ready again


@dataclass(slots=True)
class Cluster:
    broker: BrokerProcess
    a: NodeProcess
    b: NodeProcess
    proxy: FaultProxy | None = None


@asynccontextmanager
async def cluster(directory: Path, kind: str, *, proxied: bool = False) -> AsyncIterator[Cluster]:
    """A running broker (``kind``) and two ready nodes; with ``proxied`` the nodes reach the
    broker through a fault proxy."""
    broker = BrokerProcess(kind, directory)
    proxy = FaultProxy("127.0.0.1", broker.port) if proxied else None
    nodes: list[NodeProcess] = []
    try:
        broker.start()
        await broker.wait_ready()
        if proxy is not None:
            await proxy.start()
        url = broker.url(proxy.port if proxy is not None else None)
        config = node_config(directory / "history.db", broker=url)
        nodes = [NodeProcess(directory, config, name=name) for name in ("node-a", "node-b")]
        for node in nodes:  # one at a time: both open the same SQLite file
            node.start()
            await node.wait_ready()
        yield Cluster(broker, nodes[0], nodes[1], proxy)
    finally:
        for node in nodes:
            node.kill()
        if proxy is not None:
            await proxy.close()
        broker.kill()


async def all_ready(nodes: list[NodeProcess], attempts: int = READY_ATTEMPTS) -> bool:
    """Whether every node answers ``/readyz`` 200 within the bound."""
    results = await asyncio.gather(*(node.wait_status(200, attempts) for node in nodes))
    return all(results)


async def cross_traffic(
    rig: Cluster,
    recorder: Recorder,
    topic: str,
    fault: Callable[[], Awaitable[list[Verdict]]],
    *,
    warmup: float,
    tail: float,
) -> list[Verdict]:
    """Publish on ``b`` to ``topic`` (subscribers ``topic@a`` and ``topic@b``) for ``warmup``
    seconds, run ``fault``, publish ``tail`` seconds more, then wait for every delivery.
    Returns the fault's verdicts plus ``nodes_ready_at_end[kind]``."""
    async with AsyncExitStack() as stack:
        pub = await stack.enter_async_context(client(rig.b.ws_url, f"pub-{topic}"))
        first = await pub.publish(topic, {"k": "warm-up"})  # a position to subscribe from
        assert first is not None
        since = Position(first.epoch, first.seq)
        consumers = []
        for node, label in ((rig.a, "a"), (rig.b, "b")):
            name = f"{topic}@{label}"
            sdk = await stack.enter_async_context(client(node.ws_url, name))
            consumers.append(recorder.consume(name, await sdk.subscribe(topic, since=since)))
            recorder.require(name, topic)
            recorder.history.since[name] = {topic: first.seq}
        stop = asyncio.Event()
        async with background(*consumers):
            publishing = asyncio.ensure_future(
                recorder.publish_numbered(pub, topic, topic, 1_000_000, rate=RATE, stop=stop)
            )
            try:
                await asyncio.sleep(warmup)  # traffic before the fault, by design
                verdicts = await fault()
                await asyncio.sleep(tail)  # traffic after the fault, by design
            finally:
                stop.set()
                await asyncio.gather(publishing, return_exceptions=True)
            await recorder.wait_for_all(SETTLE)
    ready = await all_ready([rig.a, rig.b], attempts=20)
    verdicts.append(
        expect(f"nodes_ready_at_end[{rig.broker.kind}]", ready, f"{topic}: /readyz 200 on both")
    )
    return verdicts
