"""A raw protocol client for transport-level tests (the SDK hides what these tests probe)."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

_ids = itertools.count(1)


class RawClient:
    """Sends commands and reads frames with no retry, dedupe or reconnect."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending_events: deque[dict[str, Any]] = deque()

    @classmethod
    async def open(cls, url: str, name: str = "t", *, hello: bool = True) -> RawClient:
        client = cls(await connect(url, max_size=None, ping_interval=None))
        if hello:
            reply = await client.call("hello", client=name)
            assert reply["ok"], reply
        return client

    async def send(self, **fields: Any) -> None:
        await self.ws.send(orjson.dumps(fields).decode())

    async def recv(self) -> dict[str, Any]:
        message = await self.ws.recv()
        data: dict[str, Any] = orjson.loads(message)
        return data

    async def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its reply (events arriving first are kept for later)."""
        command_id = next(_ids)
        await self.send(id=command_id, cmd=cmd, **fields)
        while True:
            message = await self.recv()
            if message["type"] == "reply" and message["id"] == command_id:
                return message
            if message["type"] == "event":
                self.pending_events.append(message)

    async def next_event_message(self) -> dict[str, Any]:
        """The next ``event`` message, whole (group deliveries carry ``group`` and
        ``attempt`` beside the envelope)."""
        if self.pending_events:
            return self.pending_events.popleft()
        while True:
            message = await self.recv()
            if message["type"] == "event":
                return message

    async def next_event(self) -> dict[str, Any]:
        """The envelope of the next event."""
        event: dict[str, Any] = (await self.next_event_message())["event"]
        return event

    async def close(self) -> None:
        await self.ws.close()
