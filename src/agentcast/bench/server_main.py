"""The benchmark's server process: ``python -m agentcast.bench.server_main --server KIND``.

Raises the open-files limit, pins itself to ``--cpu`` when given, serves on 127.0.0.1 and a
free port, prints ``READY <port>`` on stdout once the listener is bound, and runs until
SIGTERM, SIGINT or the exit of its parent.

* ``agentcast``: a real :class:`~agentcast.node.Node` with ``ServerConfig(port=0,
  http_port=0)`` on uvloop.
* ``naive``: the baseline of :mod:`agentcast.bench.naive_server`, also on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from agentcast.bench.naive_server import NaiveServer, start_naive_server
from agentcast.bench.process import (
    announce_ready,
    exit_with_parent,
    pin_to_cpu,
    raise_nofile_limit,
)
from agentcast.config import ServerConfig
from agentcast.node import Node
from agentcast.runtime import run, setup_logging, stop_on_signals

HOST = "127.0.0.1"
SERVER_KINDS = ("agentcast", "naive")


async def serve_agentcast(stop: asyncio.Event) -> None:
    """Run a node on its default limits (and default host, 127.0.0.1) until ``stop`` is set."""
    async with Node(ServerConfig(port=0, http_port=0)) as node:
        announce_ready(node.ws_port)
        await stop.wait()


async def serve_naive(stop: asyncio.Event) -> None:
    """Run the baseline until ``stop`` is set."""
    naive = NaiveServer()
    listener = await start_naive_server(naive, HOST, 0)
    try:
        announce_ready(listener.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        listener.close()
        naive.disconnect_all()


async def serve(kind: str) -> None:
    """Serve ``kind`` until a signal or the parent's exit."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with asyncio.TaskGroup() as group:
        group.create_task(exit_with_parent(stop))
        try:
            if kind == "agentcast":
                await serve_agentcast(stop)
            else:
                await serve_naive(stop)
        finally:
            stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.server_main")
    parser.add_argument("--server", choices=SERVER_KINDS, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    pin_to_cpu(args.cpu)
    setup_logging("warning")
    # Sockets the load closes after its measured phase (or at the drain timeout) make the
    # event loop log one warning per late write; they say nothing about the measurement.
    for noisy in ("picows", "aiofastnet", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    run(serve(args.server))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
