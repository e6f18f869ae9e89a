"""A raw WebSocket client that can stop reading, or vanish without a close handshake.

The SDK always drains its socket; chaos scenarios need a client that does not:
:class:`RawSubscriber` subscribes like any client, then :meth:`RawSubscriber.pause` stops
reading (its socket's small receive buffer fills, so the node's queue for it fills too) and
:meth:`RawSubscriber.resume` reads again until the node closes the connection, reporting the
close code. :meth:`RawSubscriber.abort` drops the TCP connection abruptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RECEIVE_BUFFER = 16 * 1024  # bytes: the kernel buffer of a paused client stays small
_ids = itertools.count(1)


class RawSubscriber:
    """One WebSocket connection with ``hello`` done and one subscription."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events = 0
        self.close_code: int | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, topic: str, *, name: str = "raw", fields: dict[str, Any] | None = None
    ) -> RawSubscriber:
        """Connect to ``url``, say hello as ``name`` and subscribe to ``topic`` (with extra
        subscribe ``fields``); raise :class:`RuntimeError` if the node refuses."""
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, (parts.hostname or "127.0.0.1", parts.port or 80)
            )
            ws = await connect(url, sock=sock, max_queue=4, ping_interval=None, max_size=None)
        except BaseException:
            sock.close()
            raise
        client = cls(ws)
        try:
            await client._call("hello", client=name)
            await client._call("subscribe", topic=topic, **(fields or {}))
        except BaseException:
            await client.abort()
            raise
        client._reader = asyncio.ensure_future(client._read())
        return client

    async def _call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        command_id = next(_ids)
        await self.ws.send(orjson.dumps({"id": command_id, "cmd": cmd, **fields}).decode())
        while True:
            message = orjson.loads(await self.ws.recv())
            if message.get("type") == "reply" and message.get("id") == command_id:
                if not message.get("ok"):
                    raise RuntimeError(f"{cmd} refused: {message}")
                return dict(message)

    async def _read(self) -> None:
        try:
            while True:
                await self._reading.wait()
                await self.ws.recv()
                self.events += 1
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None

    def pause(self) -> None:
        """Stop reading (at most one more frame is taken from the socket)."""
        self._reading.clear()

    def resume(self) -> None:
        """Read again."""
        self._reading.set()

    async def wait_closed(self, within: float) -> int | None:
        """Wait (reading) until the node closed the connection; its close code, or ``None``
        if it is still open after ``within`` seconds."""
        self.resume()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), within)
        return self.close_code

    async def abort(self) -> None:
        """Drop the TCP connection at once (no close handshake) and stop reading."""
        self.ws.transport.abort()
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.ws.close()
