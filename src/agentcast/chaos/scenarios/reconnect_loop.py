"""``reconnect_loop``: a client reconnects in a loop while others publish and subscribe.

One node (durable SQLite topic), one SDK publisher at a fixed rate, one steady SDK
subscriber, and a looping consumer. Each round the looping consumer opens a new SDK client,
subscribes from the last position it saw (the first round from seq 0), reads a few events
and closes; every other round it also opens a raw connection and drops it without a close
handshake. Phases: ``baseline`` (no loop), ``fault`` (the loop, N seconds), then the loop
stops and the node is given a bounded time to close what it held.

Checked: no acked loss, no duplicate and order for the steady subscriber and for the
looping consumer across all its rounds; the node's RSS within the allowance; its open fds
back near baseline after the loop.
"""

from __future__ import annotations

import asyncio
import time
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
from agentcast.client import Position

TOPIC = "chaos.loop.stream"
RATE = 200.0
EVENTS_PER_ROUND = 20
MAX_ROUNDS = 5000
ROUND_TIMEOUT = 10.0
SETTLE = 60.0
MAX_CATCH_UP = 1_000_000
DRAIN_ATTEMPTS = 100  # x 0.1 s for the node to drop closed connections


class Looper:
    """The looping consumer: its receipts go to the recorder under ``name``."""

    def __init__(self, url: str, recorder: Recorder, name: str = "looper") -> None:
        self.url = url
        self.recorder = recorder
        self.name = name
        self.position: Position | None = None
        self.rounds = 0
        self.aborted = 0

    async def round(self, epoch: str, until_seq: int | None = None) -> None:
        """One round: resume, read :data:`EVENTS_PER_ROUND` events (or, with ``until_seq``,
        until that position), close; every other round also drop a raw connection."""
        since = self.position or Position(epoch, 0)
        async with client(self.url, f"{self.name}-{self.rounds}") as sdk:
            sub = await sdk.subscribe(TOPIC, since=since)
            for _ in range(EVENTS_PER_ROUND if until_seq is None else MAX_CATCH_UP):
                if until_seq is not None and since.seq >= until_seq:
                    break
                event = await sub.get()
                self.recorder.record(self.name, event)
                since = Position(event.epoch, event.seq)
            self.position = since
        if self.rounds % 2:
            raw = await RawSubscriber.open(self.url, TOPIC, name=f"{self.name}-raw")
            await raw.abort()
            self.aborted += 1
        self.rounds += 1

    async def loop(self, epoch: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.rounds < MAX_ROUNDS:
            async with asyncio.timeout(ROUND_TIMEOUT):
                await self.round(epoch)


async def run(settings: Settings) -> ScenarioResult:
    seconds = settings.length(full=30.0, short=5.0)
    node = NodeProcess(settings.directory, node_config(settings.directory / "history.db"))
    phase = Phase(BASELINE)
    history = History()
    recorder = Recorder(history, phase)
    looper = Looper(node.ws_url, recorder)
    try:
        node.start()
        await node.wait_ready()
        async with AsyncExitStack() as stack:
            steady = await stack.enter_async_context(client(node.ws_url, "steady"))
            steady_sub = await steady.subscribe(TOPIC)
            recorder.require("steady", TOPIC)
            pub = await stack.enter_async_context(client(node.ws_url, "pub"))
            stop_sampling, stop_publishing = asyncio.Event(), asyncio.Event()
            count = int(RATE * (seconds + 30))
            async with background(
                recorder.consume("steady", steady_sub),
                sample_memory(node, history.samples, phase, stop_sampling),
            ):
                publishing = asyncio.ensure_future(
                    recorder.publish_numbered(
                        pub, TOPIC, "e", count, rate=RATE, stop=stop_publishing
                    )
                )
                try:
                    await recorder.wait_until(lambda: bool(history.acked), SETTLE)
                    await asyncio.sleep(min(seconds / 2, 3.0))  # the baseline phase's length
                    phase.name = FAULT
                    await looper.loop(history.acked[0].epoch, seconds)
                    recorder.require("looper", TOPIC)
                    phase.name = "after"
                    stop_publishing.set()
                    await publishing
                finally:
                    stop_publishing.set()
                    await asyncio.gather(publishing, return_exceptions=True)
                last = max(ack.seq for ack in history.acked)
                async with asyncio.timeout(SETTLE):  # the looper catches up for good
                    await looper.round(history.acked[0].epoch, until_seq=last)
                await recorder.wait_for_all(SETTLE)
                connections = await _wait_connections(node, 2)
                history.samples.append(node.sample("after"))
                stop_sampling.set()
        verdicts = check(
            history, ("no_acked_loss", "no_duplicate", "order", "memory_bounded", "fds_bounded")
        )
        verdicts.append(
            expect(
                "connections_released",
                connections <= 2,
                f"{looper.rounds} rounds, {looper.aborted} aborted raw connections; "
                f"{connections:g} connections open after the loop (2 expected)",
            )
        )
        stats = {"acked": len(history.acked), "rounds": looper.rounds, "aborted": looper.aborted}
        return ScenarioResult(verdicts, stats)
    finally:
        node.kill()


async def _wait_connections(node: NodeProcess, expected: int) -> float:
    """Poll the node's connection gauge until it is at most ``expected`` (bounded)."""
    value = 0.0
    for _ in range(DRAIN_ATTEMPTS):
        value = metric(await node.metrics(), "agentcast_connections")
        if value <= expected:
            return value
        await asyncio.sleep(0.1)
    return value
