"""The durable benchmark's WebSocket clients (picows listeners) and the frames they send.

* A :class:`DurablePublisher` publishes ``count`` acked events to its own topic with at most
  ``window`` unanswered: it sends the first ``window`` when started and one more from the
  receive callback for every reply, so no task wakes up per message. Every ok reply adds
  ``ack time - send time`` to the shared :class:`AckTally` and its ``seq`` is checked
  against the previous one (one publisher per topic, so they must be 1, 2, 3, ...).
* A :class:`ResumeSubscriber` sends ``subscribe`` with ``since`` and records when the reply,
  the first and the last expected event arrive, checking that the events are exactly
  ``seq`` 1..R in order.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport

TOPIC_PREFIX = "bench.durable"
RESUME_TOPIC = f"{TOPIC_PREFIX}.resume"
HELLO_ID = "hello"
SUBSCRIBE_ID = "subscribe"
PING_ID = "ping"


def publisher_topic(index: int) -> str:
    """The topic publisher ``index`` writes to (one topic per publisher)."""
    return f"{TOPIC_PREFIX}.p{index}"


def hello_frame(client: str) -> bytes:
    return orjson.dumps({"id": HELLO_ID, "cmd": "hello", "client": client, "protocol": 1})


def ping_frame() -> bytes:
    return orjson.dumps({"id": PING_ID, "cmd": "ping"})


def resume_frame(topic: str, epoch: str, seq: int) -> bytes:
    """A ``subscribe`` to ``topic`` recovering everything after ``(epoch, seq)``."""
    return orjson.dumps(
        {
            "id": SUBSCRIBE_ID,
            "cmd": "subscribe",
            "topic": topic,
            "since": {"epoch": epoch, "seq": seq},
        }
    )


def publish_prefix(topic: str, size: int) -> bytes:
    """Everything of an acked ``publish`` to ``topic`` up to its numeric ``id`` value.

    The payload is ``{"p": "xx..."}`` padded to ``size`` encoded bytes (at least 8, the
    size of the empty one). Complete a frame with :func:`publish_frame`.
    """
    pad = b"x" * max(0, size - 8)  # len('{"p":""}') == 8
    return b'{"cmd":"publish","topic":"%s","payload":{"p":"%s"},"id":' % (topic.encode(), pad)


def publish_frame(prefix: bytes, msg_id: int) -> bytes:
    return b"%s%d}" % (prefix, msg_id)


class AckTally:
    """What all publishers of one run got back; mutated only on the load's loop thread."""

    def __init__(self, publishers: int) -> None:
        self.latencies_ns: array[int] = array("q")
        self.acks = 0
        self.errors = 0
        self.first_error: object = None
        self.seq_errors = 0
        self.disconnects = 0
        self.last_ack_ns = 0
        self.epoch: str | None = None
        self.remaining = publishers
        self.all_done = asyncio.Event()
        if publishers == 0:
            self.all_done.set()

    def finished_one(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.all_done.set()


class _HelloListener(WSListener):
    """Resolves ``hello_ok`` on the ``hello`` reply (or fails it on a refusal or close)."""

    transport: WSTransport

    def __init__(self, hello_ok: asyncio.Future[None]) -> None:
        self.hello_ok = hello_ok
        self.disconnected = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def _on_hello(self, msg: dict[str, Any]) -> bool:
        """Handle ``msg`` if it is the ``hello`` reply; ``True`` when it was."""
        if msg.get("id") != HELLO_ID or self.hello_ok.done():
            return False
        if msg.get("ok"):
            self.hello_ok.set_result(None)
        else:
            self.hello_ok.set_exception(ConnectionError(f"hello refused: {msg.get('error')}"))
        return True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if not self.hello_ok.done():
            self.hello_ok.set_exception(ConnectionError("disconnected before hello"))


class DurablePublisher(_HelloListener):
    """One publishing connection: ``count`` acked publishes to ``topic``, ``window`` in flight."""

    def __init__(
        self,
        hello_ok: asyncio.Future[None],
        tally: AckTally,
        topic: str,
        count: int,
        size: int,
        window: int,
    ) -> None:
        super().__init__(hello_ok)
        self.tally = tally
        self.topic = topic
        self.count = count
        self.window = max(1, window)
        self.prefix = publish_prefix(topic, size)
        self.sent_ns: array[int] = array("q", bytes(8 * (count + 1)))
        self.sent = 0
        self.answered = 0
        self.last_seq = 0
        self.stopped = False
        if count == 0:
            tally.finished_one()

    def start(self) -> None:
        """Send the first ``window`` publishes; the rest follow the replies."""
        for _ in range(min(self.window, self.count)):
            self._send_next()

    def stop(self) -> None:
        """Send nothing more (the phase timed out)."""
        self.stopped = True

    def _send_next(self) -> None:
        self.sent += 1
        self.sent_ns[self.sent] = time.monotonic_ns()
        self.transport.send(WSMsgType.TEXT, publish_frame(self.prefix, self.sent))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        msg = orjson.loads(frame.get_payload_as_memoryview())
        if msg.get("type") != "reply" or self._on_hello(msg):
            return
        msg_id = msg.get("id")
        if not isinstance(msg_id, int) or not 0 < msg_id <= self.sent:
            return
        tally = self.tally
        if msg.get("ok"):
            result = msg["result"]
            tally.acks += 1
            tally.latencies_ns.append(now - self.sent_ns[msg_id])
            tally.last_ack_ns = now
            seq = result["seq"]
            if seq != self.last_seq + 1:
                tally.seq_errors += 1
            self.last_seq = seq
            if tally.epoch is None:
                tally.epoch = result["epoch"]
        else:
            tally.errors += 1
            if tally.first_error is None:
                tally.first_error = msg.get("error")
        self.answered += 1
        if self.answered == self.count:
            tally.finished_one()
        elif self.sent < self.count and not self.stopped:
            self._send_next()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        if self.answered < self.count:
            self.tally.disconnects += 1
            self.answered = self.count
            self.tally.finished_one()


class ResumeSubscriber(_HelloListener):
    """Resumes one topic from ``seq`` 0 and expects exactly ``expected`` events, 1..expected.

    Times are ``time.monotonic_ns()`` values (0 until they happen): ``reply_ns`` of the
    subscribe reply, ``first_ns`` and ``last_ns`` of the first and the ``expected``-th event.
    ``complete`` is set at the ``expected``-th event, ``pinged`` at the reply to
    :func:`ping_frame`; events after the ``expected``-th count as ``extra``.
    """

    def __init__(self, hello_ok: asyncio.Future[None], expected: int) -> None:
        super().__init__(hello_ok)
        self.expected = expected
        self.received = 0
        self.out_of_order = 0
        self.extra = 0
        self.reply: dict[str, Any] | None = None
        self.reply_ns = 0
        self.first_ns = 0
        self.last_ns = 0
        self.complete = asyncio.Event()
        self.pinged = asyncio.Event()
        if expected == 0:
            self.complete.set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        msg = orjson.loads(frame.get_payload_as_memoryview())
        kind = msg.get("type")
        if kind == "event":
            self._on_event(msg["event"]["seq"], now)
        elif kind == "reply" and not self._on_hello(msg):
            if msg.get("id") == SUBSCRIBE_ID:
                self.reply = msg
                self.reply_ns = now
                if not msg.get("ok"):
                    self.complete.set()
            elif msg.get("id") == PING_ID:
                self.pinged.set()

    def _on_event(self, seq: int, now: int) -> None:
        if self.received >= self.expected:
            self.extra += 1
            return
        self.received += 1
        if seq != self.received:
            self.out_of_order += 1
        if self.received == 1:
            self.first_ns = now
        if self.received == self.expected:
            self.last_ns = now
            self.complete.set()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        self.complete.set()
        self.pinged.set()
