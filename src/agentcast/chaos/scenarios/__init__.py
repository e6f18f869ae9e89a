"""One module per chaos scenario; :data:`SCENARIOS` maps each name to its ``run``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agentcast.chaos.scenarios import (
    broker_faults,
    broker_restart,
    kill_node,
    reconnect_loop,
    stuck_consumer,
)
from agentcast.chaos.scenarios.common import ScenarioResult, Settings

Scenario = Callable[[Settings], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "kill_node": (kill_node.run, "kill -9 of a durable SQLite node mid-publish, restarted"),
    "broker_restart": (broker_restart.run, "two nodes; private Redis and NATS killed, restarted"),
    "stuck_consumer": (stuck_consumer.run, "one WebSocket client stops reading for a while"),
    "reconnect_loop": (reconnect_loop.run, "a client reconnecting in a loop during traffic"),
    "broker_faults": (broker_faults.run, "node-broker link: latency, cut, reset by a proxy"),
}
