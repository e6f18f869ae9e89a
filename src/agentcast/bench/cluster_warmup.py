"""The cluster benchmark's warm-up: proof that every node receives the topic's traffic.

A node asks the broker for a topic's traffic when its first connection subscribes, and the
broker applies that asynchronously, after the node has already answered the ``subscribe``.
Events published before every node's interest is in place would be lost for the wrong
reason, so before measuring, the load:

1. opens one :class:`Probe` per node, subscribed to the benchmark's topic (the measured
   subscribers connected afterwards only add to an interest that is already in place);
2. sends warm-up publishes ``{"w": k}`` (``ack: false``), one per round, and ends the round
   as soon as every probe has received event ``k``, or after ``round_wait`` seconds
   (:func:`warm_up`; at most ``rounds`` rounds).

Events of one publishing node keep their order through the broker, so once every probe
has warm-up event ``k``, every earlier warm-up event has arrived too: none can reach a
subscriber connected afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from agentcast.bench.load_clients import (
    SUBSCRIBE_ID,
    TOPIC,
    Publisher,
    hello_frame,
    subscribe_frame,
)

WARMUP_ID = 3
CLIENT_READ_BUFFER = 4096


class WarmUpError(Exception):
    """The warm-up could not prove that every node receives the topic."""


def warmup_frame(round_no: int) -> bytes:
    """An unacknowledged publish of ``{"w": round_no}`` to the benchmark's topic."""
    return orjson.dumps(
        {
            "id": WARMUP_ID,
            "cmd": "publish",
            "topic": TOPIC,
            "ack": False,
            "payload": {"w": round_no},
        }
    )


class Probe(WSListener):
    """A subscriber that only records the highest warm-up round it received.

    ``subscribed`` resolves once its ``subscribe`` is ok; ``changed`` is set on every
    warm-up event (the waiter clears it).
    """

    transport: WSTransport

    def __init__(self, subscribed: asyncio.Future[None], changed: asyncio.Event) -> None:
        self.subscribed = subscribed
        self.changed = changed
        self.highest = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_bytes())
        event = msg.get("event")
        if event is None:
            self._on_control(msg)
            return
        payload = event.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("w"), int):
            self.highest = max(self.highest, payload["w"])
            self.changed.set()

    def _on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "reply" or self.subscribed.done():
            return
        if not msg.get("ok"):
            self.subscribed.set_exception(ConnectionError(f"refused: {msg.get('error')}"))
        elif msg.get("id") == SUBSCRIBE_ID:
            self.subscribed.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("disconnected before subscribing"))


async def open_probe(url: str, name: str, changed: asyncio.Event) -> Probe:
    """Connect a :class:`Probe` to ``url`` and wait until it is subscribed (bound the wait
    with ``asyncio.timeout``)."""
    subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    probe = Probe(subscribed, changed)
    await ws_connect(lambda: probe, url, read_buffer_init_size=CLIENT_READ_BUFFER)
    try:
        probe.transport.send(WSMsgType.TEXT, hello_frame(name))
        probe.transport.send(WSMsgType.TEXT, subscribe_frame())
        await subscribed
    except BaseException:
        probe.transport.disconnect(graceful=False)
        raise
    return probe


async def warm_up(
    publisher: Publisher,
    probes: Sequence[Probe],
    changed: asyncio.Event,
    *,
    rounds: int,
    round_wait: float,
) -> int:
    """Publish warm-up rounds until every probe has the latest; return the rounds used.

    Raises :class:`WarmUpError` after ``rounds`` rounds of ``round_wait`` seconds, or when
    the publisher's connection closes.
    """
    for round_no in range(1, rounds + 1):
        if publisher.disconnected:
            raise WarmUpError("the publisher disconnected during the warm-up")
        changed.clear()
        publisher.transport.send(WSMsgType.TEXT, warmup_frame(round_no))
        try:
            async with asyncio.timeout(round_wait):
                while not all(probe.highest >= round_no for probe in probes):
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            continue
        return round_no
    behind = sum(1 for probe in probes if probe.highest < rounds)
    raise WarmUpError(
        f"{behind} of {len(probes)} nodes received no warm-up event within "
        f"{rounds * round_wait:g} s: is the broker reachable from every node?"
    )
