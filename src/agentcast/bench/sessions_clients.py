"""The sessions load's WebSocket clients (picows listeners) and their shared :class:`Tally`.

Every publish carries ``{"t": <send time>, "p": "xx..."}`` where the send time is
``time.monotonic_ns()`` (CLOCK_MONOTONIC is shared by every process of a Linux machine), so
a receiver's latency is ``receive time - t``. The node frames an event once and sends the
same bytes to every subscriber, so :class:`Tally` parses each distinct event frame once and
remembers its send time; the per-delivery work (clock read, count, latency) is still done
for every delivery. Events without a send time (the node's presence events) are ignored.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport

HELLO_ID = 1
FIRST_SUBSCRIBE_ID = 2
DECODED_CACHE_SIZE = 8192
NOT_STAMPED = -1


def hello_frame(client: str) -> bytes:
    return orjson.dumps({"id": HELLO_ID, "cmd": "hello", "client": client, "protocol": 1})


def subscribe_frame(index: int, topic: str, policy: str | None) -> bytes:
    """The ``index``-th subscribe of a connection (ids follow :data:`FIRST_SUBSCRIBE_ID`)."""
    command: dict[str, Any] = {"id": FIRST_SUBSCRIBE_ID + index, "cmd": "subscribe"}
    command["topic"] = topic
    if policy is not None:
        command["policy"] = policy
    return orjson.dumps(command)


def publish_frame(msg_id: int, topic: bytes, sent_ns: int, pad: bytes) -> bytes:
    """An acknowledged ``publish`` of ``{"t": sent_ns, "p": pad}`` to ``topic``."""
    return b'{"cmd":"publish","id":%d,"topic":"%s","payload":{"t":%d,"p":"%s"}}' % (
        msg_id,
        topic,
        sent_ns,
        pad,
    )


class Tally:
    """What every connection of one load process saw; mutated on its loop thread only.

    ``expected`` grows as messages are sent (by their fan-out), ``received`` as stamped
    events arrive; latencies are kept only for messages sent inside the measured window
    ``[window_start_ns, window_end_ns)``. ``settled`` is set once, after :meth:`finish`,
    every expected event arrived and every publish was answered.
    """

    def __init__(self) -> None:
        self.expected = 0
        self.received = 0
        self.received_in_window = 0
        self.acked = 0
        self.publish_errors = 0
        self.first_error: object = None
        self.pending_acks = 0
        self.disconnects = 0
        self.window_start_ns = 0
        self.window_end_ns = 0
        self.e2e_ns: array[int] = array("q")
        self.ack_ns: array[int] = array("q")
        self.finished = False
        self.settled = asyncio.Event()
        self.decoded: dict[bytes, int] = {}

    def in_window(self, sent_ns: int) -> bool:
        return self.window_start_ns <= sent_ns < self.window_end_ns

    def finish(self) -> None:
        """Every message was sent: from now on :attr:`settled` may be set."""
        self.finished = True
        self.check()

    def check(self) -> None:
        if self.finished and self.received >= self.expected and self.pending_acks <= 0:
            self.settled.set()

    def sent_of(self, data: bytes) -> int | None:
        """The send time of an event frame (:data:`NOT_STAMPED` for an event without one),
        or ``None`` for anything else (replies, pings)."""
        sent = self.decoded.get(data)
        if sent is not None:
            return sent
        msg = orjson.loads(data)
        event = msg.get("event")
        if event is None:
            return None
        payload = event.get("payload")
        stamp = payload.get("t") if isinstance(payload, dict) else None
        sent = stamp if isinstance(stamp, int) else NOT_STAMPED
        if len(self.decoded) >= DECODED_CACHE_SIZE:
            self.decoded.clear()
        self.decoded[data] = sent
        return sent


class Client(WSListener):
    """One agent or observer connection.

    ``ready`` resolves once ``hello`` and all ``subscriptions`` subscribes are ok. Agents
    also publish (:meth:`publish`); their replies give the ack latency.
    """

    transport: WSTransport

    def __init__(self, tally: Tally, subscriptions: int, ready: asyncio.Future[None]) -> None:
        self.tally = tally
        self.waiting = subscriptions + 1
        self.ready = ready
        self.sent_at: dict[int, int] = {}

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def publish(self, msg_id: int, topic: bytes, pad: bytes) -> int:
        """Send one acknowledged publish now; return its send time."""
        sent_ns = time.monotonic_ns()
        self.sent_at[msg_id] = sent_ns
        self.tally.pending_acks += 1
        self.transport.send(WSMsgType.TEXT, publish_frame(msg_id, topic, sent_ns, pad))
        return sent_ns

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        tally = self.tally
        data = frame.get_payload_as_bytes()
        sent = tally.sent_of(data)
        if sent is None:
            self._on_reply(orjson.loads(data), now)
            return
        if sent == NOT_STAMPED:
            return
        tally.received += 1
        if tally.window_start_ns <= sent < tally.window_end_ns:
            tally.received_in_window += 1
            tally.e2e_ns.append(now - sent)
        if tally.finished and tally.received >= tally.expected:
            tally.check()

    def _on_reply(self, msg: dict[str, Any], now: int) -> None:
        if msg.get("type") != "reply":
            return
        msg_id = msg.get("id")
        if isinstance(msg_id, int) and msg_id < FIRST_SUBSCRIBE_ID + 2 and not self.ready.done():
            if not msg.get("ok"):
                self.ready.set_exception(ConnectionError(f"refused: {msg.get('error')}"))
                return
            self.waiting -= 1
            if self.waiting == 0:
                self.ready.set_result(None)
            return
        tally = self.tally
        sent = self.sent_at.pop(msg_id, None) if isinstance(msg_id, int) else None
        if sent is None:
            return
        tally.pending_acks -= 1
        if msg.get("ok"):
            tally.acked += 1
            if tally.window_start_ns <= sent < tally.window_end_ns:
                tally.ack_ns.append(now - sent)
        else:
            tally.publish_errors += 1
            if tally.first_error is None:
                tally.first_error = msg.get("error")
        tally.check()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.disconnects += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before subscribing"))
