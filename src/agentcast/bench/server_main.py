"""The benchmark's server process: ``python -m agentcast.bench.server_main --server KIND``.

Raises the open-files limit, pins itself to ``--cpu`` when given, serves on 127.0.0.1 and a
free port, prints ``READY <port>`` on stdout once the listener is bound, and runs until
SIGTERM, SIGINT or the exit of its parent.

* ``agentcast``: a real :class:`~agentcast.node.Node` with ``ServerConfig(port=0,
  http_port=0)`` on uvloop. With ``--durable PATTERN`` (repeatable) the topics matching
  ``PATTERN`` are durable (keeping ``--max-events`` events each) in the history store at
  ``--history URL``; on SIGUSR1 the node then prints one ``STATS {json}`` line on stdout
  with its group-commit counters (:func:`durable_stats`). With ``--broker URL`` the node
  joins the cluster of every node started with the same broker URL (``redis://`` or
  ``nats://``, ``?prefix=`` to keep runs apart).
* ``naive``: the baseline of :mod:`agentcast.bench.naive_server`, also on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, replace

import orjson

from agentcast.bench.naive_server import NaiveServer, start_naive_server
from agentcast.bench.process import (
    announce_ready,
    exit_with_parent,
    pin_to_cpu,
    raise_nofile_limit,
)
from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from agentcast.runtime import run, setup_logging, stop_on_signals

HOST = "127.0.0.1"
SERVER_KINDS = ("agentcast", "naive")
STATS_PREFIX = "STATS "
DEFAULT_MAX_EVENTS = DurableRule("x").max_events


@dataclass(slots=True, frozen=True)
class NodeOptions:
    """How the ``agentcast`` server is configured beyond ``ServerConfig``'s defaults."""

    history: str | None = None
    durable: tuple[str, ...] = ()
    max_events: int = DEFAULT_MAX_EVENTS
    broker: str = ""

    def config(self) -> ServerConfig:
        """The node's configuration: ports 0, the broker if any, and the durable rules and
        store if any."""
        base = ServerConfig(port=0, http_port=0, broker=self.broker)
        if not self.durable:
            return base
        rules = tuple(DurableRule(pattern, max_events=self.max_events) for pattern in self.durable)
        if self.history is None:
            return replace(base, durable=rules)
        return replace(base, durable=rules, history=self.history)


def durable_stats(node: Node) -> dict[str, int]:
    """The node's group-commit counters: ``batches`` (store appends that committed),
    ``appended`` (events stored by them) and ``failures`` (appends that failed); all 0
    without durable topics."""
    log = node.hub.durable_log if node.hub is not None else None
    if log is None:
        return {"batches": 0, "appended": 0, "failures": 0}
    return {"batches": log.batches, "appended": log.appended, "failures": log.failures}


def parse_stats(line: str) -> dict[str, int]:
    """The counters of a ``STATS {json}`` line; :class:`ValueError` for anything else."""
    if not line.startswith(STATS_PREFIX):
        raise ValueError(f"not a stats line: {line!r}")
    stats = orjson.loads(line[len(STATS_PREFIX) :])
    if not isinstance(stats, dict):
        raise ValueError(f"not a stats object: {line!r}")
    return {str(key): int(value) for key, value in stats.items()}


def _print_stats(node: Node) -> None:
    sys.stdout.write(STATS_PREFIX + orjson.dumps(durable_stats(node)).decode() + "\n")
    sys.stdout.flush()


async def serve_agentcast(stop: asyncio.Event, options: NodeOptions | None = None) -> None:
    """Run a node (default limits, default host 127.0.0.1, the durable rules and store of
    ``options``) until ``stop`` is set; SIGUSR1 prints its :func:`durable_stats`."""
    options = options or NodeOptions()
    async with Node(options.config()) as node:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, _print_stats, node)
        try:
            announce_ready(node.ws_port)
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)


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


async def serve(kind: str, options: NodeOptions | None = None) -> None:
    """Serve ``kind`` until a signal or the parent's exit."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with asyncio.TaskGroup() as group:
        group.create_task(exit_with_parent(stop))
        try:
            if kind == "agentcast":
                await serve_agentcast(stop, options)
            else:
                await serve_naive(stop)
        finally:
            stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.server_main")
    parser.add_argument("--server", choices=SERVER_KINDS, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--history", default=None, help="history store URL (with --durable)")
    parser.add_argument("--durable", action="append", default=[], help="durable topic pattern")
    parser.add_argument("--max-events", type=int, default=DEFAULT_MAX_EVENTS)
    parser.add_argument("--broker", default="", help="cluster broker URL (redis:// or nats://)")
    args = parser.parse_args(argv)
    options = NodeOptions(
        args.history, tuple(args.durable), max(1, args.max_events), broker=args.broker
    )
    raise_nofile_limit()
    pin_to_cpu(args.cpu)
    setup_logging("warning")
    # Sockets the load closes after its measured phase (or at the drain timeout) make the
    # event loop log one warning per late write; they say nothing about the measurement.
    for noisy in ("picows", "aiofastnet", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    run(serve(args.server, options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
