"""The sessions benchmark's server: ``python -m agentcast.bench.sessions_server``.

A real :class:`~agentcast.node.Node` on 127.0.0.1 and free ports, with the outbound queue
bounds of ``--max-queue-messages`` / ``--max-queue-bytes``. It raises the open-files limit,
pins itself to ``--cpu`` when given, prints ``READY <port>`` once the listener is bound, and
answers every SIGUSR1 with one ``STATS {json}`` line on stdout (:func:`hub_stats`: the
counters the ``/v1/stats`` document is built from). It runs until SIGTERM, SIGINT or the
exit of its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from typing import Any

import orjson

from agentcast.bench.process import (
    announce_ready,
    exit_with_parent,
    pin_to_cpu,
    raise_nofile_limit,
)
from agentcast.config import ServerConfig
from agentcast.hub.config import HubConfig
from agentcast.hub.stats import LATENCY_BUCKETS, QUEUE_BUCKETS
from agentcast.node import Node
from agentcast.runtime import run, setup_logging, stop_on_signals

STATS_PREFIX = "STATS "
DEFAULTS = HubConfig()


class GcTimes:
    """This process's garbage collections: their total time, how many were full (oldest
    generation), and a log of the longest one of each window (nanoseconds; the window is
    reset by :meth:`take_longest`). Installed as a ``gc`` callback by :func:`serve`."""

    def __init__(self) -> None:
        self.full = 0
        self.total_ns = 0
        self.longest_ns = 0
        self._started = 0

    def take_longest(self) -> int:
        """The longest collection since the previous call."""
        longest, self.longest_ns = self.longest_ns, 0
        return longest

    def callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._started = now
            return
        spent = now - self._started
        self.total_ns += spent
        self.longest_ns = max(self.longest_ns, spent)
        if info.get("generation") == 2:
            self.full += 1


GC_TIMES = GcTimes()


def hub_stats(node: Node) -> dict[str, Any]:
    """The node's counters since start: ``publishes``, ``deliveries``, ``writes``,
    ``slow_disconnects``, ``drops`` (total over policies), ``connections`` (open now),
    ``queued_max`` (the longest outbound queue now) and ``queue_counts`` (the histogram of
    queue lengths seen at each write, non-cumulative, over :data:`QUEUE_BUCKETS` + Inf) and
    ``write_latency_counts`` (the same for the time from a publication to the write that
    carried it out of the node, over :data:`LATENCY_BUCKETS` seconds + Inf), and the
    process's garbage collections (:class:`GcTimes`: ``gc_s`` in all, ``gc_full`` full
    collections, ``gc_longest_ms`` the longest collection since the previous call)."""
    hub = node.hub
    if hub is None:
        return {}
    stats = hub.stats
    return {
        "publishes": stats.publishes,
        "deliveries": stats.deliveries,
        "writes": stats.writes,
        "slow_disconnects": stats.slow_disconnects,
        "drops": sum(stats.drops.values()),
        "connections": len(hub.connections),
        "queued_max": max((len(conn.queue) for conn in hub.connections.values()), default=0),
        "queue_counts": list(stats.queue_length.counts),
        "write_latency_counts": list(stats.write_latency.counts),
        "gc_s": GC_TIMES.total_ns / 1e9,
        "gc_full": GC_TIMES.full,
        "gc_longest_ms": GC_TIMES.take_longest() / 1e6,
    }


def parse_stats(line: str) -> dict[str, Any]:
    """The object of a ``STATS {json}`` line; :class:`ValueError` for anything else."""
    if not line.startswith(STATS_PREFIX):
        raise ValueError(f"not a stats line: {line!r}")
    stats = orjson.loads(line[len(STATS_PREFIX) :])
    if not isinstance(stats, dict):
        raise ValueError(f"not a stats object: {line!r}")
    return stats


def _print_stats(node: Node) -> None:
    sys.stdout.write(STATS_PREFIX + orjson.dumps(hub_stats(node)).decode() + "\n")
    sys.stdout.flush()


async def serve(config: ServerConfig) -> None:
    """Run a node with ``config`` until a signal or the parent's exit."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    gc.callbacks.append(GC_TIMES.callback)
    async with asyncio.TaskGroup() as group:
        group.create_task(exit_with_parent(stop))
        try:
            async with Node(config) as node:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGUSR1, _print_stats, node)
                try:
                    announce_ready(node.ws_port)
                    await stop.wait()
                finally:
                    loop.remove_signal_handler(signal.SIGUSR1)
        finally:
            stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.sessions_server")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--max-queue-messages", type=int, default=DEFAULTS.max_queue_messages)
    parser.add_argument("--max-queue-bytes", type=int, default=DEFAULTS.max_queue_bytes)
    args = parser.parse_args(argv)
    hub = HubConfig(
        max_queue_messages=max(1, args.max_queue_messages),
        max_queue_bytes=max(1, args.max_queue_bytes),
        # The load's connections only receive between their publishes: no idle closes.
        idle_timeout=3600.0,
        heartbeat_interval=3600.0,
    )
    config = ServerConfig(port=0, http_port=0, log_level="warning", hub=hub)
    raise_nofile_limit()
    pin_to_cpu(args.cpu)
    setup_logging("warning")
    # Sockets the load closes at its end make the loop log one warning per late write.
    for noisy in ("picows", "aiofastnet", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    run(serve(config))
    return 0


__all__ = ["LATENCY_BUCKETS", "QUEUE_BUCKETS", "hub_stats", "main", "parse_stats"]

if __name__ == "__main__":
    raise SystemExit(main())
