"""``stuck_consumer``: one WebSocket client stops reading while traffic flows to others.

One node (durable SQLite topic), one SDK publisher at a fixed rate with 4 KiB payloads,
three SDK subscribers and one raw subscriber with a small receive buffer, all on the same
topic. Phases:

* ``baseline``: everyone reads; the other subscribers' latency here is the reference;
* ``fault``: the raw subscriber stops reading for N seconds (30 by default, 5 short);
* ``recovery``: it reads again and must find its connection handled by its slow-consumer
  policy (``disconnect``: closed with ``4001``).

Checked: no acked loss, no duplicate and order for the SDK subscribers; the node's RSS
stays within the allowance over baseline throughout; the SDK subscribers' p99 latency in
``fault`` stays within the documented factor of ``baseline``; the policy was applied.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from agentcast.chaos.invariants import BASELINE, FAULT, History, check
from agentcast.chaos.processes import NodeProcess, metric
from agentcast.chaos.rawclient import RawSubscriber
from agentcast.chaos.recorder import Phase, Recorder
from agentcast.chaos.scenarios.common import (
    ScenarioResult,
    Settings,
    background,
    client,
    expect,
    node_config,
    sample_memory,
)

TOPIC = "chaos.stuck.stream"
RATE = 400.0  # events/s
PAD = 4096  # payload padding, bytes: enough to fill the stuck socket in seconds
SUBSCRIBERS = 3
SETTLE = 60.0
CLOSE_WAIT = 5.0
DISCONNECTS = "agentcast_slow_consumer_disconnects_total"


async def run(settings: Settings) -> ScenarioResult:
    stuck_for = settings.length(full=30.0, short=5.0)
    baseline = min(max(stuck_for / 2, 3.0), 10.0)
    node = NodeProcess(settings.directory, node_config(settings.directory / "history.db"))
    phase = Phase(BASELINE)
    history = History()
    recorder = Recorder(history, phase)
    try:
        node.start()
        await node.wait_ready()
        disconnects_before = metric(await node.metrics(), DISCONNECTS)
        async with AsyncExitStack() as stack:
            consumers = []
            for i in range(SUBSCRIBERS):
                sdk = await stack.enter_async_context(client(node.ws_url, f"sub-{i}"))
                consumers.append(recorder.consume(sdk.name or "", await sdk.subscribe(TOPIC)))
                recorder.require(sdk.name or "", TOPIC)
            stuck = await RawSubscriber.open(
                node.ws_url, TOPIC, name="stuck", fields={"policy": "disconnect"}
            )
            stack.push_async_callback(stuck.close)
            pub = await stack.enter_async_context(client(node.ws_url, "pub"))
            stop_sampling = asyncio.Event()
            stop_publishing = asyncio.Event()
            count = int(RATE * (baseline + stuck_for + CLOSE_WAIT + 5))
            async with background(
                *consumers, sample_memory(node, history.samples, phase, stop_sampling)
            ):
                publishing = asyncio.ensure_future(
                    recorder.publish_numbered(
                        pub, TOPIC, "e", count, rate=RATE, pad_bytes=PAD, stop=stop_publishing
                    )
                )
                try:
                    await asyncio.sleep(baseline)  # the phase's length is the point here
                    phase.name = FAULT
                    stuck.pause()
                    await asyncio.sleep(stuck_for)
                    phase.name = "recovery"
                    code = await stuck.wait_closed(CLOSE_WAIT)
                    stop_publishing.set()
                    await publishing
                finally:
                    stop_publishing.set()
                    await asyncio.gather(publishing, return_exceptions=True)
                caught_up = await recorder.wait_for_all(SETTLE)
                stop_sampling.set()
        disconnects = metric(await node.metrics(), DISCONNECTS) - disconnects_before
        verdicts = check(
            history, ("no_acked_loss", "no_duplicate", "order", "memory_bounded", "latency")
        )
        verdicts.append(
            expect(
                "slow_consumer_policy",
                code == 4001 and disconnects >= 1,
                f"stuck client closed with {code} after {stuck_for:g} s unread "
                f"(disconnect policy: 4001), slow-consumer disconnects {disconnects:g}",
            )
        )
        stats = {
            "acked": len(history.acked),
            "stuck_seconds": stuck_for,
            "baseline_seconds": baseline,
            "stuck_client_events_read": stuck.events,
            "caught_up": caught_up,
        }
        return ScenarioResult(verdicts, stats)
    finally:
        node.kill()
