"""Crash test: ``kill -9`` a durable node mid-stream (twice), restart it on the same SQLite
file and ports, and check the invariants:

* every acknowledged publish is in history exactly once, history positions are gapless, and
  history keeps the order the publisher issued its publishes in (resends keep their order);
* each ack's position is where its event sits in history (a resend of a committed publish is
  answered with the original position);
* an SDK consumer subscribed throughout receives every event exactly once (after the SDK's
  dedupe), in ``seq`` order, with no gap, resuming by itself after each crash.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentcast.client import Client, Envelope, PublishAck
from tests.nodeproc import ServerProcess
from tests.wsclient import RawClient

TOPIC = "acme.crash.stream"
EVENTS = 2_000
KILLS = 2
IN_FLIGHT = 20
READY_ATTEMPTS = 600  # x READY_POLL seconds at most, per start
READY_POLL = 0.05

SDK_OPTIONS: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.1,
    "max_reconnect_attempts": 1000,
    "ack_timeout": 60,
}


def sqlite_node_config(directory: Path) -> str:
    return (
        f'history = "sqlite:///{directory / "history.db"}"\n'
        'durable = ["acme.>"]\n'
        'log_level = "warning"\n'
        "retention_interval = 3600\n"
    )


async def read_history(url: str, epoch: str, count: int) -> list[dict[str, Any]]:
    """Every event of the topic, through a fresh raw subscriber resuming from seq 0."""
    raw = await RawClient.open(url, "history-reader")
    try:
        reply = await raw.call("subscribe", topic=TOPIC, since={"epoch": epoch, "seq": 0})
        assert reply["ok"], reply
        assert reply["result"]["recovered"] is True
        assert reply["result"]["epoch"] == epoch
        assert reply["result"]["seq"] == count
        return [await raw.next_event() for _ in range(count)]
    finally:
        await raw.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kill_9_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, sqlite_node_config(tmp_path))
    try:
        server.start()
        async with asyncio.timeout(200):
            await server.wait_ready()
            async with (
                Client(server.ws_url, name="consumer", **SDK_OPTIONS) as consumer,
                Client(server.ws_url, name="publisher", **SDK_OPTIONS) as publisher,
            ):
                await run_stream(server, consumer, publisher)
    finally:
        server.kill()


async def run_stream(server: ServerProcess, consumer: Client, publisher: Client) -> None:
    sub = await consumer.subscribe(TOPIC)
    received: list[Envelope] = []
    first_received = asyncio.Event()
    acked: dict[int, PublishAck] = {}
    issued: list[int] = []  # the order publish() was called in
    thresholds = [EVENTS * (k + 1) // (KILLS + 1) for k in range(KILLS)]
    reached = [asyncio.Event() for _ in thresholds]
    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def consume() -> None:
        async for event in sub:
            received.append(event)
            first_received.set()
            if len(received) >= EVENTS or event.seq >= EVENTS:
                return

    async def publish(n: int) -> None:
        async with in_flight:
            issued.append(n)
            ack = await publisher.publish(TOPIC, n, idempotency_key=f"crash-{n}")
        assert ack is not None
        acked[n] = ack
        for threshold, event in zip(thresholds, reached, strict=True):
            if len(acked) >= threshold:
                event.set()

    async with asyncio.TaskGroup() as group:
        consumer_task = group.create_task(consume())
        publishers = [group.create_task(publish(n)) for n in range(1, EVENTS + 1)]
        for event in reached:
            await event.wait()
            await first_received.wait()  # the consumer has a position to resume from
            assert len(acked) < EVENTS, "the stream ended before the crash"
            server.kill()
            server.start()
            await server.wait_ready()
        await asyncio.gather(*publishers)
        async with asyncio.timeout(60):  # the last event is committed: it must arrive
            await consumer_task

    # Every publish was acknowledged, in one history.
    assert sorted(acked) == list(range(1, EVENTS + 1))
    epochs = {ack.epoch for ack in acked.values()}
    assert len(epochs) == 1
    epoch = epochs.pop()
    assert server.starts == KILLS + 1
    # The publisher needs a connection for each ack, so it came back after every kill; the
    # consumer may still be reconnecting when the next kill comes, so it counts fewer.
    assert publisher.reconnects >= KILLS and consumer.reconnects >= 1

    # (a) History: each n exactly once, gapless, in the order the publishes were issued,
    # and each ack's position holds its own event.
    history = await read_history(server.ws_url, epoch, EVENTS)
    assert [e["seq"] for e in history] == list(range(1, EVENTS + 1))
    assert {e["epoch"] for e in history} == {epoch}
    payloads = [e["payload"] for e in history]
    assert sorted(payloads) == list(range(1, EVENTS + 1))  # no loss, no duplicate
    assert payloads == issued
    for n, ack in acked.items():
        stored = history[ack.seq - 1]
        assert (stored["payload"], stored["id"]) == (n, ack.id)

    # (b) The consumer: every event once, in seq order, no gap, same ids as history.
    assert [e.seq for e in received] == list(range(1, EVENTS + 1))
    assert [e.id for e in received] == [e["id"] for e in history]
    assert {e.epoch for e in received} == {epoch}
    assert sub.recovered is True and sub.gaps == 0 and sub.dropped == 0
    assert sub.position is not None and sub.position.seq == EVENTS
