"""The process frame shared by the Python peer servers (``python -m ...peers.X --cpu N``).

:func:`server_main` parses ``--cpu`` (plus the module's own options), raises the open-files
limit, pins the process, and runs ``serve(stop, options)`` on plain uvloop (the peers get
their libraries' defaults, none of agentcast's runtime tuning) until SIGTERM, SIGINT or the
parent's exit sets ``stop``. ``serve`` prints ``READY <port>`` once it listens
(:func:`~agentcast.bench.process.announce_ready`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from agentcast.bench.process import exit_with_parent, pin_to_cpu, raise_nofile_limit
from agentcast.runtime import stop_on_signals

Serve = Callable[[asyncio.Event, argparse.Namespace], Coroutine[Any, Any, None]]


async def _serve_until_stopped(serve: Serve, options: argparse.Namespace) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with asyncio.TaskGroup() as group:
        group.create_task(exit_with_parent(stop))
        try:
            await serve(stop, options)
        finally:
            stop.set()


def server_main(
    prog: str, serve: Serve, argv: list[str] | None, parser: argparse.ArgumentParser | None = None
) -> int:
    """Run a peer server process (see the module's docstring); exit status 0."""
    parser = parser or argparse.ArgumentParser(prog=prog)
    parser.add_argument("--cpu", type=int, default=None)
    options = parser.parse_args(argv)
    raise_nofile_limit()
    pin_to_cpu(options.cpu)
    logging.basicConfig(level=logging.ERROR)
    uvloop.run(_serve_until_stopped(serve, options))
    return 0
