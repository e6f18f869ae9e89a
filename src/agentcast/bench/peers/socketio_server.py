"""python-socketio as a fan-out peer: ``python -m agentcast.bench.peers.socketio_server``.

The usual Python Socket.IO server: ``socketio.AsyncServer`` on aiohttp (uvloop),
WebSocket transport only, library defaults otherwise. A client emits ``subscribe`` with a
room name (joins the room, acked) and ``publish`` with a room name and a payload (emitted as
event ``m`` to the room, then acked). Prints ``READY <port>`` once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from agentcast.bench.peers.pyserver import server_main
from agentcast.bench.process import announce_ready

HOST = "127.0.0.1"


def _missing() -> SystemExit:
    return SystemExit(
        "python-socketio is not installed: pip install 'agentcast[bench]' "
        "(or pip install 'python-socketio>=5.11')"
    )


async def serve(stop: asyncio.Event, options: argparse.Namespace) -> None:
    """Serve until ``stop`` is set."""
    try:
        import socketio  # type: ignore[import-untyped]
    except ImportError:
        raise _missing() from None
    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])

    async def subscribe(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    async def publish(sid: str, room: str, payload: Any) -> bool:
        await sio.emit("m", payload, room=room)
        return True

    sio.on("subscribe", subscribe)
    sio.on("publish", publish)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        announce_ready(int(runner.addresses[0][1]))
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    return server_main("python -m agentcast.bench.peers.socketio_server", serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
