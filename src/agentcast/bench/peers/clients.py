"""Wire adapters of the fan-out load: how a peer server is subscribed to, published to, and
how its deliveries are recognised.

Each wire is a (subscriber, publisher) pair of subclasses of the load's picows listeners
(:mod:`agentcast.bench.load_clients`); they only translate frames and always end in the
shared :meth:`~agentcast.bench.load_clients.Subscriber.count_event` and
:meth:`~agentcast.bench.load_clients.Publisher.count_answer`, so every server is measured by
the same code. Peers carry no sequence number of their own, so the publisher writes one into
the payload: ``{"s": seq, "t": sent_ns, "p": "xx..."}`` (:func:`peer_payload`), and each
distinct delivered frame is decoded once per run through the tally's cache.

* ``socketio``: Engine.IO 4 / Socket.IO 5 text packets over a WebSocket (``0{..}`` open,
  ``40`` namespace connect, ``42[..]`` event, ``43N[..]`` ack, ``2``/``3`` ping/pong); the
  same wire serves python-socketio and Node's socket.io.
* ``ws-redis``: JSON frames of the naive WebSocket + Redis broadcaster
  (:mod:`agentcast.bench.peers.ws_redis_server`).
* ``nats``: the NATS text protocol over NATS server's WebSocket listener (``CONNECT``,
  ``SUB``, ``PUB``, ``MSG``, ``PING``/``PONG``, ``+OK`` in verbose mode as the publish ack).
"""

from __future__ import annotations

import asyncio
import time

import orjson
from picows import WSFrame, WSMsgType, WSTransport

from agentcast.bench.load_clients import TOPIC, Publisher, Subscriber, Tally

SIO_SUBSCRIBE = b'420["subscribe","' + TOPIC.encode() + b'"]'
_SIO_PUBLISH = b'["publish","' + TOPIC.encode() + b'",'
_NATS_CONNECT = b'CONNECT {"verbose":%s,"pedantic":false,"protocol":1,"lang":"bench"}\r\n'
_NATS_SUB = b"SUB " + TOPIC.encode() + b" 1\r\n"
_NATS_PUB = b"PUB " + TOPIC.encode() + b" %d\r\n%s\r\n"
_REDIS_SUB = orjson.dumps({"op": "sub", "topic": TOPIC})
_REDIS_PUB = b'{"op":"pub","topic":"' + TOPIC.encode() + b'","id":%d,"data":%s}'


def peer_payload(seq: int, size: int, sent_ns: int) -> bytes:
    """``{"s": seq, "t": sent_ns, "p": "xx..."}`` padded to ``size`` bytes (longer only when
    ``size`` is below the unpadded length)."""
    head = b'{"s":%d,"t":%d,"p":"' % (seq, sent_ns)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def _decoded(payload: object) -> tuple[int, int]:
    if not isinstance(payload, dict):
        raise ValueError(f"not a bench payload: {payload!r}")
    return int(payload["s"]), int(payload["t"])


# --- Socket.IO ----------------------------------------------------------------------------


class SocketIOSubscriber(Subscriber):
    """Open -> ``40`` -> ``420["subscribe",topic]`` -> ack ``430`` = subscribed; events are
    ``42["m",payload]``; a server ping ``2`` is answered ``3``."""

    def start(self, index: int) -> None:
        """Nothing to send first: the server opens with ``0{...}``."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        data = frame.get_payload_as_bytes()
        decoded = self.tally.decoded.get(data)
        if decoded is None:
            if not data.startswith(b'42["m",'):
                self._on_packet(data)
                return
            decoded = _decoded(orjson.loads(data[2:])[1])
            self.tally.remember(data, decoded)
        self.count_event(decoded[0], decoded[1], now)

    def _on_packet(self, data: bytes) -> None:
        if data == b"2":
            self.transport.send(WSMsgType.TEXT, b"3")
        elif data.startswith(b"0{"):
            self.transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40"):
            self.transport.send(WSMsgType.TEXT, SIO_SUBSCRIBE)
        elif data.startswith(b"430") and not self.subscribed.done():
            self.subscribed.set_result(None)
        elif data.startswith(b"44") and not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"refused: {data!r}"))


class SocketIOPublisher(Publisher):
    """Open -> ``40`` -> connected (``hello_ok``); publish ``N`` is
    ``42N["publish",topic,payload]``, answered by ack ``43N[...]``."""

    def start(self) -> None:
        """Nothing to send first: the server opens with ``0{...}``."""

    def publish(self, seq: int, size: int, sent_ns: int) -> None:
        frame = b"42%d%s%s]" % (seq, _SIO_PUBLISH, peer_payload(seq, size, sent_ns))
        self.transport.send(WSMsgType.TEXT, frame)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if data.startswith(b"43"):
            self.count_answer(True)
        elif data == b"2":
            transport.send(WSMsgType.TEXT, b"3")
        elif data.startswith(b"0{"):
            transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40") and not self.hello_ok.done():
            self.hello_ok.set_result(None)
        elif data.startswith(b"44") and not self.hello_ok.done():
            self.hello_ok.set_exception(ConnectionError(f"refused: {data!r}"))


# --- naive WebSocket + Redis --------------------------------------------------------------


class RedisWsSubscriber(Subscriber):
    """``{"op":"sub"}`` -> ``{"op":"subscribed"}``; every other frame is a payload."""

    def start(self, index: int) -> None:
        self.transport.send(WSMsgType.TEXT, _REDIS_SUB)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        data = frame.get_payload_as_bytes()
        decoded = self.tally.decoded.get(data)
        if decoded is None:
            msg = orjson.loads(data)
            if "op" in msg:
                if msg["op"] == "subscribed" and not self.subscribed.done():
                    self.subscribed.set_result(None)
                return
            decoded = _decoded(msg)
            self.tally.remember(data, decoded)
        self.count_event(decoded[0], decoded[1], now)


class RedisWsPublisher(Publisher):
    """Connected = ready; publish ``N`` is ``{"op":"pub",...,"id":N}``, answered by
    ``{"op":"ack","id":N}``."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        if not self.hello_ok.done():
            self.hello_ok.set_result(None)

    def start(self) -> None:
        """Nothing to send: the connection is the whole handshake."""

    def publish(self, seq: int, size: int, sent_ns: int) -> None:
        self.transport.send(WSMsgType.TEXT, _REDIS_PUB % (seq, peer_payload(seq, size, sent_ns)))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_bytes())
        if msg.get("op") == "ack":
            self.count_answer(True)
        elif msg.get("op") == "error":
            self.count_answer(False, msg.get("error"))


# --- NATS over WebSocket ------------------------------------------------------------------


class NatsStream:
    """Splits the NATS byte stream (frames may hold several operations, or part of one) into
    ``(operation line, payload or None)`` pairs."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes | None]]:
        """Append ``data``; return the operations now complete."""
        buffer = self._buffer + data if self._buffer else data
        ops: list[tuple[bytes, bytes | None]] = []
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            if line.startswith(b"MSG "):
                length = int(line.rsplit(b" ", 1)[1])
                body_end = end + 2 + length
                if len(buffer) < body_end + 2:
                    break
                ops.append((line, buffer[end + 2 : body_end]))
                start = body_end + 2
            else:
                ops.append((line, None))
                start = end + 2
        self._buffer = buffer[start:]
        return ops


class NatsSubscriber(Subscriber):
    """On ``INFO``: ``CONNECT`` + ``SUB`` + ``PING``; the ``PONG`` means subscribed (the
    server answers in order); every ``MSG`` is a delivery; a server ``PING`` gets a
    ``PONG``."""

    def __init__(self, tally: Tally, subscribed: asyncio.Future[None]) -> None:
        super().__init__(tally, subscribed)
        self.stream = NatsStream()

    def start(self, index: int) -> None:
        """Nothing to send first: the server opens with ``INFO``."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.monotonic_ns()
        tally = self.tally
        for line, payload in self.stream.feed(frame.get_payload_as_bytes()):
            if payload is None:
                self._on_line(line)
                continue
            decoded = tally.decoded.get(payload)
            if decoded is None:
                decoded = _decoded(orjson.loads(payload))
                tally.remember(payload, decoded)
            self.count_event(decoded[0], decoded[1], now)

    def _on_line(self, line: bytes) -> None:
        if line.startswith(b"INFO "):
            self.transport.send(
                WSMsgType.TEXT, (_NATS_CONNECT % b"false") + _NATS_SUB + b"PING\r\n"
            )
        elif line == b"PING":
            self.transport.send(WSMsgType.TEXT, b"PONG\r\n")
        elif line == b"PONG" and not self.subscribed.done():
            self.subscribed.set_result(None)
        elif line.startswith(b"-ERR") and not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(line.decode(errors="replace")))


class NatsPublisher(Publisher):
    """On ``INFO``: verbose ``CONNECT`` + ``PING``; the ``PONG`` is ``hello_ok``; after it,
    every ``+OK`` acks one ``PUB`` and every ``-ERR`` counts as an error."""

    def __init__(self, hello_ok: asyncio.Future[None]) -> None:
        super().__init__(hello_ok)
        self.stream = NatsStream()

    def start(self) -> None:
        """Nothing to send first: the server opens with ``INFO``."""

    def publish(self, seq: int, size: int, sent_ns: int) -> None:
        payload = peer_payload(seq, size, sent_ns)
        self.transport.send(WSMsgType.TEXT, _NATS_PUB % (len(payload), payload))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        for line, _ in self.stream.feed(frame.get_payload_as_bytes()):
            if line == b"+OK":
                if self.hello_ok.done():
                    self.count_answer(True)
            elif line.startswith(b"-ERR"):
                if self.hello_ok.done():
                    self.count_answer(False, line.decode(errors="replace"))
                else:
                    self.hello_ok.set_exception(ConnectionError(line.decode(errors="replace")))
            elif line.startswith(b"INFO "):
                transport.send(WSMsgType.TEXT, (_NATS_CONNECT % b"true") + b"PING\r\n")
            elif line == b"PING":
                transport.send(WSMsgType.TEXT, b"PONG\r\n")
            elif line == b"PONG" and not self.hello_ok.done():
                self.hello_ok.set_result(None)


WIRES = ("agentcast", "socketio", "ws-redis", "nats")

_CLASSES: dict[str, tuple[type[Subscriber], type[Publisher]]] = {
    "agentcast": (Subscriber, Publisher),
    "socketio": (SocketIOSubscriber, SocketIOPublisher),
    "ws-redis": (RedisWsSubscriber, RedisWsPublisher),
    "nats": (NatsSubscriber, NatsPublisher),
}


def wire_classes(wire: str) -> tuple[type[Subscriber], type[Publisher]]:
    """The (subscriber, publisher) listener classes of ``wire`` (one of :data:`WIRES`)."""
    return _CLASSES[wire]
