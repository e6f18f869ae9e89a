"""The fan-out load's WebSocket clients (picows listeners) and the frames they send.

A :class:`Subscriber` sends ``hello`` and ``subscribe`` and then only counts: every event
adds ``receive time - send time`` to the shared :class:`Tally` (the publisher stamps each
payload with ``time.monotonic_ns()``; CLOCK_MONOTONIC is shared by all processes of a Linux
machine) and is checked against the subscriber's previous ``seq``. The :class:`Publisher`
counts acks and error replies so the sender can keep a bounded number in flight.

Both classes speak agentcast's protocol; :mod:`agentcast.bench.peers.clients` subclasses them
for other servers' wires, overriding only how frames are sent and recognised
(``start``/``publish``/``on_ws_frame``) and ending in the shared :meth:`Subscriber.count_event`
and :meth:`Publisher.count_answer`.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport

TOPIC = "bench.fanout.t"
HELLO_ID = 1
SUBSCRIBE_ID = 2
DECODED_CACHE_SIZE = 4096
_PUBLISH_PREFIX = b'{"cmd":"publish","topic":"' + TOPIC.encode() + b'","ack":true,"id":'


def hello_frame(client: str) -> bytes:
    return orjson.dumps({"id": HELLO_ID, "cmd": "hello", "client": client, "protocol": 1})


def subscribe_frame() -> bytes:
    return orjson.dumps({"id": SUBSCRIBE_ID, "cmd": "subscribe", "topic": TOPIC})


def publish_frame(msg_id: int, size: int, sent_ns: int) -> bytes:
    """A ``publish`` of ``{"t": sent_ns, "p": "xx..."}`` padded to ``size`` encoded bytes.

    The payload is larger than ``size`` only when ``size`` is below its minimum (about 30
    bytes, the padding then being empty).
    """
    fixed = 13 + len(str(sent_ns))  # len('{"t":<ns>,"p":""}')
    pad = b"x" * max(0, size - fixed)
    return b'%s%d,"payload":{"t":%d,"p":"%s"}}' % (_PUBLISH_PREFIX, msg_id, sent_ns, pad)


class Tally:
    """What all subscribers of one run received; mutated only on the load's loop thread.

    Every server sends the same bytes for one event to every subscriber, so ``decoded`` maps
    an event frame to its ``(seq, sent_ns)`` and each distinct frame is parsed once, not once
    per subscriber; the per-event work (receive time, latency, count, order check) is still
    done for every event of every subscriber.
    """

    def __init__(self, subscribers: int, expected_each: int) -> None:
        self.subscribers = subscribers
        self.expected_each = expected_each
        self.latencies_ns: array[int] = array("q")
        self.received = 0
        self.out_of_order = 0
        self.complete = 0
        self.disconnects = 0
        self.last_receive_ns = 0
        self.all_complete = asyncio.Event()
        if subscribers == 0 or expected_each == 0:
            self.all_complete.set()
        self.decoded: dict[bytes, tuple[int, int]] = {}

    def remember(self, frame: bytes, decoded: tuple[int, int]) -> None:
        """Cache an event frame's ``(seq, sent_ns)`` (bounded to :data:`DECODED_CACHE_SIZE`)."""
        if len(self.decoded) >= DECODED_CACHE_SIZE:
            self.decoded.clear()
        self.decoded[frame] = decoded


class Subscriber(WSListener):
    """One subscriber connection; ``subscribed`` resolves once its ``subscribe`` is ok."""

    transport: WSTransport

    def __init__(self, tally: Tally, subscribed: asyncio.Future[None]) -> None:
        self.tally = tally
        self.subscribed = subscribed
        self.last_seq = 0
        self.count = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        tally = self.tally
        data = frame.get_payload_as_bytes()
        decoded = tally.decoded.get(data)
        if decoded is None:
            msg = orjson.loads(data)
            event = msg.get("event")
            if event is None:
                self._on_control(msg)
                return
            decoded = (event["seq"], event["payload"]["t"])
            tally.remember(data, decoded)
        self.count_event(decoded[0], decoded[1], now)

    def start(self, index: int) -> None:
        """Send what subscribes this connection (the wire's first frames)."""
        self.transport.send(WSMsgType.TEXT, hello_frame(f"sub-{index}"))
        self.transport.send(WSMsgType.TEXT, subscribe_frame())

    def count_event(self, seq: int, sent_ns: int, now: int) -> None:
        """Account one delivered event (every wire ends here): latency, count, order."""
        tally = self.tally
        if seq <= self.last_seq:
            tally.out_of_order += 1
        else:
            self.last_seq = seq
        tally.latencies_ns.append(now - sent_ns)
        tally.received += 1
        tally.last_receive_ns = now
        self.count += 1
        if self.count == tally.expected_each:
            tally.complete += 1
            if tally.complete == tally.subscribers:
                tally.all_complete.set()

    def _on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "reply" or self.subscribed.done():
            return
        if not msg.get("ok"):
            self.subscribed.set_exception(ConnectionError(f"refused: {msg.get('error')}"))
        elif msg.get("id") == SUBSCRIBE_ID:
            self.subscribed.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.disconnects += 1
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("disconnected before subscribing"))


class Publisher(WSListener):
    """The publishing connection: counts ok and error replies to its publishes."""

    transport: WSTransport

    def __init__(self, hello_ok: asyncio.Future[None]) -> None:
        self.hello_ok = hello_ok
        self.acks = 0
        self.errors = 0
        self.first_error: object = None
        self.disconnected = False
        self._progress = asyncio.Event()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_memoryview())
        if msg.get("type") != "reply":
            return
        if msg.get("id") == HELLO_ID and not self.hello_ok.done():
            if msg.get("ok"):
                self.hello_ok.set_result(None)
            else:
                self.hello_ok.set_exception(ConnectionError(f"hello refused: {msg.get('error')}"))
            return
        self.count_answer(bool(msg.get("ok")), msg.get("error"))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        self._progress.set()
        if not self.hello_ok.done():
            self.hello_ok.set_exception(ConnectionError("publisher disconnected"))

    def start(self) -> None:
        """Send what identifies the publisher (``hello_ok`` resolves on the answer)."""
        self.transport.send(WSMsgType.TEXT, hello_frame("bench-publisher"))

    def publish(self, seq: int, size: int, sent_ns: int) -> None:
        """Send publish number ``seq`` (from 1) of a ``size``-byte payload stamped ``sent_ns``."""
        self.transport.send(WSMsgType.TEXT, publish_frame(seq, size, sent_ns))

    def count_answer(self, ok: bool, error: object = None) -> None:
        """Account one answer to a publish (an ack or an error)."""
        if ok:
            self.acks += 1
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = error
        self._progress.set()

    @property
    def answered(self) -> int:
        return self.acks + self.errors

    async def wait_answered(self, count: int) -> None:
        """Return once at least ``count`` publishes were answered (or the socket closed)."""
        while self.answered < count and not self.disconnected:
            self._progress.clear()
            await self._progress.wait()
