"""The naive WebSocket + Redis pub/sub broadcaster, as teams first write it:
``python -m agentcast.bench.peers.ws_redis_server --redis-port P``.

aiohttp WebSockets on uvloop, redis.asyncio with the standard ``json`` module. A frame
``{"op":"sub","topic":T}`` adds the socket to the topic's set (the first subscriber of a
topic makes the shared pub/sub connection ``SUBSCRIBE`` to it) and answers
``{"op":"subscribed","topic":T}``; ``{"op":"pub","topic":T,"id":N,"data":D}`` becomes
``PUBLISH T json(D)`` and is answered ``{"op":"ack","id":N}``. One reader task takes every
message off the pub/sub connection and awaits ``send_str`` to each subscribed socket in turn.
Prints ``READY <port>`` once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

import redis.asyncio as redis
from aiohttp import WSMsgType, web

from agentcast.bench.peers.pyserver import server_main
from agentcast.bench.process import announce_ready

HOST = "127.0.0.1"
WS_PATH = "/ws"


class Broadcaster:
    """Topic -> sockets, the shared pub/sub connection, and the publishing client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pubsub = client.pubsub()
        self.topics: dict[str, set[web.WebSocketResponse]] = {}
        self.subscribed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def subscribe(self, topic: str, ws: web.WebSocketResponse) -> None:
        async with self._lock:
            if topic not in self.topics:
                self.topics[topic] = set()
                await self.pubsub.subscribe(topic)
                self.subscribed.set()
        self.topics[topic].add(ws)

    def forget(self, ws: web.WebSocketResponse) -> None:
        for sockets in self.topics.values():
            sockets.discard(ws)

    async def relay(self) -> None:
        """Forward every pub/sub message to the topic's sockets, one ``send_str`` each."""
        await self.subscribed.wait()
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            data = message["data"].decode()
            for ws in list(self.topics.get(message["channel"].decode(), ())):
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(data)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                command: dict[str, Any] = json.loads(msg.data)
                if command.get("op") == "sub":
                    await self.subscribe(command["topic"], ws)
                    await ws.send_str(json.dumps({"op": "subscribed", "topic": command["topic"]}))
                elif command.get("op") == "pub":
                    await self.client.publish(command["topic"], json.dumps(command["data"]))
                    await ws.send_str(json.dumps({"op": "ack", "id": command["id"]}))
        finally:
            self.forget(ws)
        return ws


async def serve(stop: asyncio.Event, options: argparse.Namespace) -> None:
    """Serve until ``stop`` is set."""
    client = redis.Redis(host=HOST, port=options.redis_port)
    broadcaster = Broadcaster(client)
    app = web.Application()
    app.router.add_get(WS_PATH, broadcaster.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    relay = asyncio.create_task(broadcaster.relay())
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        announce_ready(int(runner.addresses[0][1]))
        await stop.wait()
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await runner.cleanup()
        await broadcaster.pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.peers.ws_redis_server")
    parser.add_argument("--redis-port", type=int, required=True)
    return server_main(parser.prog, serve, argv, parser)


if __name__ == "__main__":
    raise SystemExit(main())
