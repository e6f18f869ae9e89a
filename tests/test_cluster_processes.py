"""Three nodes as real processes linked by a real broker (Redis, then NATS), with
durable history in PostgreSQL: cross-node delivery in order, and ``kill -9`` of a node
whose clients fail over through a load balancer and resume with no loss and no duplicate.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentcast.client import Client, Envelope
from tests.lbproxy import FailoverProxy
from tests.nodeproc import ServerProcess
from tests.pg import pg_history_url

TOPIC = "acme.cluster.stream"
EVENTS = 600
SDK: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.2,
    "max_reconnect_attempts": 1000,
    "ack_timeout": 60,
}
BROKERS = {
    "redis": "redis://127.0.0.1:6379/0?prefix={prefix}",
    "nats": "nats://127.0.0.1:4222?prefix={prefix}",
}


def node_config(history: str, broker: str) -> str:
    return (
        f'history = "{history}"\n'
        f'broker = "{broker}"\n'
        'durable = ["acme.>"]\n'
        'log_level = "warning"\n'
        "retention_interval = 3600\n"
        "cluster_heartbeat = 0.2\n"
    )


async def collect(sub: Any, count: int, into: list[Envelope]) -> None:
    async for event in sub:
        into.append(event)
        if len(into) == count:
            return


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", list(BROKERS))
async def test_kill_9_of_a_node_fails_over_with_no_loss(tmp_path: Path, broker: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    async with pg_history_url() as history:
        config = node_config(history, BROKERS[broker].format(prefix=prefix))
        nodes = [ServerProcess(tmp_path / name, config) for name in "abc"]
        proxy = FailoverProxy([nodes[0].port, nodes[1].port])
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                await node.wait_ready()
            await proxy.start()
            lb_url = f"ws://127.0.0.1:{proxy.port}/v1/ws"
            async with (
                Client(lb_url, name="via-lb", **SDK) as via_lb,
                Client(nodes[1].ws_url, name="on-b", **SDK) as on_b,
                Client(nodes[2].ws_url, name="publisher", **SDK) as publisher,
            ):
                first_node = via_lb.node_id
                sub_lb = await via_lb.subscribe(TOPIC)
                sub_b = await on_b.subscribe(TOPIC)
                got_lb: list[Envelope] = []
                got_b: list[Envelope] = []
                readers = [
                    asyncio.ensure_future(collect(sub_lb, EVENTS, got_lb)),
                    asyncio.ensure_future(collect(sub_b, EVENTS, got_b)),
                ]
                for n in range(EVENTS):
                    if n == EVENTS // 3:
                        nodes[0].kill()  # the node the load balancer chose first
                    await publisher.publish(TOPIC, n)
                await asyncio.wait_for(asyncio.gather(*readers), 120)
                assert via_lb.node_id != first_node, "the client failed over to another node"
                for got in (got_lb, got_b):
                    assert [e.seq for e in got] == list(range(1, EVENTS + 1))
                    assert [e.payload for e in got] == list(range(EVENTS))
                assert sub_lb.recovered is True and sub_lb.gaps == 0
        finally:
            await proxy.close()
            for node in nodes:
                node.kill()
