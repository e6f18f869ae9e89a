"""The fan-out baseline: a bare picows server as a first version is usually written.

It speaks the subset of protocol v1 the fan-out benchmark uses (``hello``, ``subscribe`` to
an exact topic, ``publish`` with or without ack, ``ping``) with the same envelope as a node,
so a subscriber cannot tell the two apart. The difference is the fan-out: for every publish
it encodes the event once and then calls ``transport.send(WSMsgType.TEXT, frame)`` once per
subscriber socket: one frame and one write per message per socket, no outbound queue, no
coalescing, no bound. It is a baseline for measurements, not a server to deploy.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from agentcast.protocol.envelope import new_event_id, rfc3339_now

WS_PATH = "/v1/ws"


class NaiveServer:
    """Topic table and sequence numbers of the baseline; one event loop thread."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(3)
        self.node_id = f"naive-{self.epoch}"
        self.topics: dict[str, dict[NaiveConnection, None]] = {}
        self.seqs: dict[str, int] = {}
        self.live: set[NaiveConnection] = set()
        self._next_id = 0

    def new_connection_id(self) -> str:
        self._next_id += 1
        return f"{self.node_id}-{self._next_id}"

    def handle(self, conn: NaiveConnection, msg: dict[str, Any]) -> None:
        """Execute one decoded command of ``conn`` and send its reply."""
        cmd = msg.get("cmd")
        cmd_id = msg.get("id")
        if cmd == "publish":
            result = self.publish(conn, msg)
            if msg.get("ack", True):
                conn.reply(cmd_id, result)
        elif cmd == "subscribe":
            topic = msg.get("topic")
            if not isinstance(topic, str) or "*" in topic or ">" in topic:
                conn.error(cmd_id, "bad_request", "the baseline subscribes exact topics only")
                return
            self.topics.setdefault(topic, {})[conn] = None
            conn.topics.add(topic)
            conn.reply(cmd_id, {"topic": topic})
        elif cmd == "hello":
            conn.client = msg.get("client") if isinstance(msg.get("client"), str) else None
            conn.reply(
                cmd_id, {"connection": conn.id, "node": self.node_id, "protocol": 1, "limits": {}}
            )
        elif cmd == "ping":
            conn.reply(cmd_id, {"time": rfc3339_now()})
        else:
            conn.error(cmd_id, "unknown_command", f"the baseline does not serve {cmd!r}")

    def publish(self, conn: NaiveConnection, msg: dict[str, Any]) -> dict[str, Any]:
        """Sequence one event and send it to every subscriber, one write per socket."""
        topic = str(msg.get("topic"))
        seq = self.seqs.get(topic, 0) + 1
        self.seqs[topic] = seq
        event_id = new_event_id()
        frame = orjson.dumps(
            {
                "type": "event",
                "event": {
                    "id": event_id,
                    "topic": topic,
                    "seq": seq,
                    "epoch": self.epoch,
                    "time": rfc3339_now(),
                    "source": f"ac://client/{conn.client or conn.id}",
                    "correlation_id": msg.get("correlation_id"),
                    "causation_id": msg.get("causation_id"),
                    "lamport": seq,
                    "headers": msg.get("headers") or {},
                    "payload": msg.get("payload"),
                },
            }
        )
        for subscriber in list(self.topics.get(topic, ())):
            subscriber.transport.send(WSMsgType.TEXT, frame)
        return {
            "id": event_id,
            "topic": topic,
            "seq": seq,
            "epoch": self.epoch,
            "lamport": seq,
            "duplicate": False,
        }

    def forget(self, conn: NaiveConnection) -> None:
        """``conn`` disconnected: drop it from every topic it held."""
        self.live.discard(conn)
        for topic in conn.topics:
            subscribers = self.topics.get(topic)
            if subscribers is not None:
                subscribers.pop(conn, None)
                if not subscribers:
                    del self.topics[topic]
        conn.topics.clear()

    def disconnect_all(self) -> None:
        """Drop every connection (shutdown)."""
        for conn in list(self.live):
            conn.transport.disconnect(graceful=False)


class NaiveConnection(WSListener):
    """One socket of the baseline: decode each text frame and hand it to the server."""

    transport: WSTransport

    def __init__(self, server: NaiveServer) -> None:
        self.server = server
        self.id = server.new_connection_id()
        self.client: str | None = None
        self.topics: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.server.live.add(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        try:
            msg = orjson.loads(frame.get_payload_as_memoryview())
        except orjson.JSONDecodeError:
            self.error(None, "bad_json", "the frame is not valid JSON")
            return
        if not isinstance(msg, dict):
            self.error(None, "bad_json", "a command is a JSON object")
            return
        self.server.handle(self, msg)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.server.forget(self)

    def reply(self, cmd_id: Any, result: dict[str, Any]) -> None:
        self.transport.send(
            WSMsgType.TEXT,
            orjson.dumps({"type": "reply", "id": cmd_id, "ok": True, "result": result}),
        )

    def error(self, cmd_id: Any, code: str, message: str) -> None:
        self.transport.send(
            WSMsgType.TEXT,
            orjson.dumps(
                {
                    "type": "reply",
                    "id": cmd_id,
                    "ok": False,
                    "error": {"code": code, "message": message},
                }
            ),
        )


async def start_naive_server(server: NaiveServer, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (``port`` 0 picks a free one) with picows' defaults."""

    def factory(request: WSUpgradeRequest) -> NaiveConnection | None:
        path = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
        if path.split("?", 1)[0] != WS_PATH:
            return None
        return NaiveConnection(server)

    return await ws_create_server(factory, host, port)
