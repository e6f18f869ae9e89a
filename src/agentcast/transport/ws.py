"""WebSocket listener on picows: pumps frames between sockets and the hub, nothing more."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from agentcast.hub.connection import Connection
from agentcast.hub.dispatch import handle_frame
from agentcast.hub.hub import Hub
from agentcast.protocol.codes import CloseCode
from agentcast.security.errors import SecurityError
from agentcast.security.guard import ConnectionAuth, Security

log = logging.getLogger(__name__)

WS_PATH = "/v1/ws"
WRITE_BUFFER_HIGH = 256 * 1024
WRITE_BUFFER_LOW = 64 * 1024
READ_BUFFER_INIT = 2048


class WebSocketConnection(WSListener):
    """One socket: the hub's :class:`~agentcast.hub.connection.Sink` for its connection."""

    __slots__ = ("auth", "conn", "hub", "live", "transport", "underlying")

    def __init__(
        self, hub: Hub, live: set[WebSocketConnection], auth: ConnectionAuth | None = None
    ) -> None:
        self.hub = hub
        self.live = live
        self.auth = auth
        self.conn: Connection | None = None
        self.transport: WSTransport | None = None
        self.underlying: asyncio.Transport | None = None

    # -- picows callbacks --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.underlying = transport.underlying_transport
        self.underlying.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self.conn = self.hub.connect(self, self.auth)
        self.live.add(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        conn.last_recv = self.hub.clock()
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            if not frame.fin:
                self.hub.close(conn, CloseCode.PROTOCOL_ERROR, "fragmented messages", flush=True)
                return
            handle_frame(conn, frame.get_payload_as_bytes())
        elif msg_type is WSMsgType.CLOSE:
            self.hub.close(conn, CloseCode.NORMAL, "", flush=True)
        elif msg_type is WSMsgType.BINARY:
            self.hub.close(
                conn, CloseCode.UNSUPPORTED_DATA, "binary frames are not supported", flush=True
            )
        elif msg_type is WSMsgType.CONTINUATION:
            self.hub.close(conn, CloseCode.PROTOCOL_ERROR, "fragmented messages", flush=True)
        # PING is answered by picows; PONG only proves liveness (recorded above).

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.live.discard(self)
        if self.conn is not None:
            self.hub.disconnected(self.conn)

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.hub.set_paused(self.conn, True)
        if self.underlying is not None:
            self.underlying.pause_reading()

    def resume_writing(self) -> None:
        if self.underlying is not None and not self.underlying.is_closing():
            self.underlying.resume_reading()
        if self.conn is not None:
            self.hub.set_paused(self.conn, False)

    # -- Sink --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.underlying is not None
        self.underlying.write(data)

    def close(self, code: int, reason: str) -> None:
        assert self.transport is not None
        # picows types the code as its enum but writes any 16-bit value (4000-4999 here).
        self.transport.send_close(code, reason.encode())  # type: ignore[arg-type]
        self.transport.disconnect()

    def ping(self) -> None:
        assert self.transport is not None
        self.transport.send_ping()


async def start_websocket_server(
    hub: Hub,
    host: str,
    port: int,
    live: set[WebSocketConnection],
    *,
    max_frame_bytes: int,
    **kwargs: Any,
) -> asyncio.Server:
    """Bind the WebSocket listener on ``host:port`` (``port`` 0 picks a free one).

    ``live`` holds every socket from handshake to disconnect, so shutdown can wait for them.
    The upgrade is refused with an HTTP error and a JSON body (``{"error": {"code",
    "message"}}``) when the node's security refuses it (Origin, connection rate, a bad
    ``token`` in the URL); the URL is never logged since it may carry a token.
    """
    security: Security = hub.security

    def factory(
        request: WSUpgradeRequest,
    ) -> WebSocketConnection | WSUpgradeResponseWithListener | None:
        target = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
        if target.split("?", 1)[0] != WS_PATH:
            return None
        try:
            auth = security.admit_upgrade(request.headers.get("Origin"), target)
        except SecurityError as exc:
            headers = {"Retry-After": "1"} if exc.http_status == 429 else None
            response = WSUpgradeResponse.create_error_response(
                exc.http_status, orjson.dumps({"error": exc.to_dict()}), headers
            )
            return WSUpgradeResponseWithListener(response, None)
        return WebSocketConnection(hub, live, auth)

    return await ws_create_server(
        factory,
        host,
        port,
        max_frame_size=max_frame_bytes,
        read_buffer_init_size=READ_BUFFER_INIT,
        websocket_handshake_timeout=10,
        **kwargs,
    )
