"""The cluster benchmark's load process: ``python -m agentcast.bench.cluster_load
--url WS_URL --server-pid PID [--url ... --server-pid ...] ...`` (one pair per node).

Phases, each bounded in time; the first node is the publisher's:

1. **warm-up** (:mod:`agentcast.bench.cluster_warmup`): one probe per node subscribes, the
   publisher connects to the first node, and warm-up rounds run until every node has
   delivered the latest one (at most ``warmup_timeout`` seconds).
2. **connect**: the ``subscribers`` spread evenly over the nodes (node ``i`` gets
   ``subscribers // n``, plus one when ``i < subscribers % n``), node after node, with the
   fan-out load's :func:`~agentcast.bench.load.connect_subscribers` and one
   :class:`~agentcast.bench.load_clients.Tally` per node. The probes are closed once all
   are connected (the subscribers then hold every node's interest), so each node serves
   exactly its share of the subscribers.
3. **publish**: :func:`~agentcast.bench.load.publish_all` on the first node.
4. **drain**: until every subscriber of every node has every event and every publish is
   answered, at most ``drain_timeout`` seconds after the last publish.

Each node's CPU time is read right before the first publish and right after the drain. The
process prints one JSON object of raw measurements on stdout (see :func:`run_cluster_load`);
progress goes to stderr unless ``quiet``. Exit status 0 with a result, 2 when a phase failed
(message on stderr), 3 when the parent went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from agentcast.bench.cluster_warmup import Probe, WarmUpError, open_probe, warm_up
from agentcast.bench.load import (
    LoadError,
    LoadPlan,
    Progress,
    ServerProbe,
    connect_publisher,
    connect_subscribers,
    publish_all,
    report_until_orphaned,
)
from agentcast.bench.load_clients import Publisher, Subscriber, Tally
from agentcast.bench.process import pin_to_cpu, raise_nofile_limit
from agentcast.bench.stats import latency_summary_ms
from agentcast.runtime import run

WARMUP_ROUND_WAIT = 0.2


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` shares that differ by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass(slots=True, frozen=True)
class ClusterLoadPlan:
    """What one cluster load run does: ``urls[i]`` is node ``i``'s WebSocket URL and
    ``server_pids[i]`` its process; the publisher uses node 0. ``broker_pid`` is the broker
    server's process when it runs on this machine (its CPU time is then measured too)."""

    urls: tuple[str, ...]
    server_pids: tuple[int, ...]
    subscribers: int
    messages: int
    size: int
    rate: float
    connect_timeout: float
    drain_timeout: float
    warmup_timeout: float
    broker_pid: int | None = None
    quiet: bool = False

    def node_plan(self, index: int, subscribers: int) -> LoadPlan:
        """The fan-out :class:`LoadPlan` of node ``index`` with ``subscribers`` of its own."""
        return LoadPlan(
            url=self.urls[index],
            server_pid=self.server_pids[index],
            subscribers=subscribers,
            messages=self.messages,
            size=self.size,
            rate=self.rate,
            connect_timeout=self.connect_timeout,
            drain_timeout=self.drain_timeout,
            quiet=self.quiet,
        )

    def to_args(self) -> list[str]:
        """The command-line arguments that :func:`parse_plan` turns back into this plan."""
        args: list[str] = []
        for url, pid in zip(self.urls, self.server_pids, strict=True):
            args += [f"--url={url}", f"--server-pid={pid}"]
        args += [
            f"--subscribers={self.subscribers}",
            f"--messages={self.messages}",
            f"--size={self.size}",
            f"--rate={self.rate}",
            f"--connect-timeout={self.connect_timeout}",
            f"--drain-timeout={self.drain_timeout}",
            f"--warmup-timeout={self.warmup_timeout}",
        ]
        if self.broker_pid is not None:
            args.append(f"--broker-pid={self.broker_pid}")
        if self.quiet:
            args.append("--quiet")
        return args


def parse_plan(argv: list[str] | None) -> tuple[ClusterLoadPlan, int | None]:
    """Parse the load's command line into a plan and the CPU to pin to."""
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.cluster_load")
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--server-pid", type=int, action="append", required=True)
    parser.add_argument("--subscribers", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--connect-timeout", type=float, required=True)
    parser.add_argument("--drain-timeout", type=float, required=True)
    parser.add_argument("--warmup-timeout", type=float, required=True)
    parser.add_argument("--broker-pid", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if len(args.url) != len(args.server_pid):
        parser.error("give one --server-pid per --url")
    plan = ClusterLoadPlan(
        urls=tuple(args.url),
        server_pids=tuple(args.server_pid),
        subscribers=args.subscribers,
        messages=args.messages,
        size=args.size,
        rate=args.rate,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        warmup_timeout=args.warmup_timeout,
        broker_pid=args.broker_pid,
        quiet=args.quiet,
    )
    return plan, args.cpu


async def _open_probes(plan: ClusterLoadPlan, changed: asyncio.Event) -> list[Probe]:
    probes: list[Probe] = []
    try:
        async with asyncio.timeout(plan.connect_timeout):
            for index, url in enumerate(plan.urls):
                probes.append(await open_probe(url, f"probe-{index}", changed))
    except (TimeoutError, OSError, ConnectionError) as exc:
        for probe in probes:
            probe.transport.disconnect(graceful=False)
        raise LoadError(f"the probe of node {len(probes)} could not subscribe: {exc!r}") from None
    return probes


async def _warm_up(
    plan: ClusterLoadPlan,
    publisher: Publisher,
    probes: list[Probe],
    changed: asyncio.Event,
    progress: Progress,
) -> tuple[int, float]:
    """Open a probe per node (appended to ``probes``, which the caller closes) and run the
    warm-up rounds; return the rounds used and the seconds they took."""
    probes.extend(await _open_probes(plan, changed))
    started = time.monotonic()
    try:
        rounds = await warm_up(
            publisher,
            probes,
            changed,
            rounds=max(1, math.ceil(plan.warmup_timeout / WARMUP_ROUND_WAIT)),
            round_wait=WARMUP_ROUND_WAIT,
        )
    except WarmUpError as exc:
        raise LoadError(f"warm-up: {exc}") from None
    elapsed = round(time.monotonic() - started, 3)
    progress.say(f"warm-up: every node delivered round {rounds} ({elapsed} s)")
    return rounds, elapsed


async def _drain(
    plan: ClusterLoadPlan, tallies: Sequence[Tally], publisher: Publisher, progress: Progress
) -> None:
    expected = sum(tally.subscribers * tally.expected_each for tally in tallies)

    def status() -> str:
        return f"draining: {sum(tally.received for tally in tallies)}/{expected} delivered"

    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(plan.drain_timeout):
            for tally in tallies:
                await tally.all_complete.wait()
            await publisher.wait_answered(plan.messages)


async def run_cluster_load(plan: ClusterLoadPlan) -> dict[str, Any]:
    """Run the plan's phases; return the raw measurements.

    Keys: ``warmup_rounds``, ``warmup_s``, ``connect_s``, ``published``, ``acked``,
    ``publish_errors``, ``first_error``, ``delivered``, ``out_of_order``, ``disconnects``,
    ``duration_s`` (first publish to last delivery on any node), ``latency_ms`` ({p50, p99,
    max} over every delivery), ``server_cpu_s`` (all nodes), ``load_cpu_s``, and ``nodes``:
    per node ``subscribers``, ``delivered``, ``out_of_order``, ``disconnects``,
    ``latency_ms``, ``server_cpu_s``, ``server_rss_before``/``server_rss_after`` (bytes);
    ``broker_cpu_s`` is the broker server's CPU over publish + drain (``None`` without
    ``broker_pid`` or when its process cannot be read).
    """
    shares = spread(plan.subscribers, len(plan.urls))
    node_plans = [plan.node_plan(i, share) for i, share in enumerate(shares)]
    servers = [ServerProbe(pid) for pid in plan.server_pids]
    tallies = [Tally(share, plan.messages) for share in shares]
    progress = Progress(plan.quiet)
    opened: list[Subscriber] = []
    probes: list[Probe] = []
    publisher: Publisher | None = None
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(progress.tick(stop_ticking))
    try:
        publisher = await connect_publisher(node_plans[0])
        rounds, warmup_s = await _warm_up(plan, publisher, probes, asyncio.Event(), progress)
        rss_before = [server.rss_bytes() for server in servers]
        started = time.monotonic()
        for index, (node_plan, tally) in enumerate(zip(node_plans, tallies, strict=True)):
            progress.say(f"node {index}: {node_plan.subscribers} subscribers on {node_plan.url}")
            await connect_subscribers(node_plan, tally, opened, progress)
        connect_s = round(time.monotonic() - started, 3)
        # Every node's interest is now held by its subscribers: the probes may go.
        _close(probes)
        rss_after = [server.rss_bytes() for server in servers]
        cpu_before = [server.cpu_seconds() for server in servers]
        broker_before = _broker_cpu(plan.broker_pid)
        load_cpu_before = time.process_time()
        first_ns = time.monotonic_ns()
        published = await publish_all(node_plans[0], publisher, progress)
        await _drain(plan, tallies, publisher, progress)
        server_cpu = [
            server.cpu_seconds() - before
            for server, before in zip(servers, cpu_before, strict=True)
        ]
        load_cpu = time.process_time() - load_cpu_before
        broker_after = _broker_cpu(plan.broker_pid)
        broker_cpu = (
            None
            if broker_before is None or broker_after is None
            else round(broker_after - broker_before, 3)
        )
        received = [tally for tally in tallies if tally.received]
        end_ns = max(t.last_receive_ns for t in received) if received else time.monotonic_ns()
        latencies: array[int] = array("q")
        for tally in tallies:
            latencies.extend(tally.latencies_ns)
        nodes = [
            {
                "subscribers": tally.subscribers,
                "delivered": tally.received,
                "out_of_order": tally.out_of_order,
                "disconnects": tally.disconnects,
                "latency_ms": latency_summary_ms(tally.latencies_ns),
                "server_cpu_s": round(cpu, 3),
                "server_rss_before": before,
                "server_rss_after": after,
            }
            for tally, cpu, before, after in zip(
                tallies, server_cpu, rss_before, rss_after, strict=True
            )
        ]
        return {
            "warmup_rounds": rounds,
            "warmup_s": warmup_s,
            "connect_s": connect_s,
            "published": published,
            "acked": publisher.acks,
            "publish_errors": publisher.errors,
            "first_error": publisher.first_error,
            "delivered": sum(tally.received for tally in tallies),
            "out_of_order": sum(tally.out_of_order for tally in tallies),
            "disconnects": sum(tally.disconnects for tally in tallies),
            "duration_s": round((end_ns - first_ns) / 1e9, 6),
            "latency_ms": latency_summary_ms(latencies),
            "server_cpu_s": round(sum(server_cpu), 3),
            "load_cpu_s": round(load_cpu, 3),
            "broker_cpu_s": broker_cpu,
            "nodes": nodes,
        }
    finally:
        stop_ticking.set()
        await ticker
        _close(probes)
        for subscriber in opened:
            subscriber.transport.disconnect(graceful=False)
        if publisher is not None:
            publisher.transport.disconnect(graceful=False)


def _broker_cpu(pid: int | None) -> float | None:
    """The CPU seconds of process ``pid``, or ``None`` (no pid, gone, or not readable)."""
    if pid is None:
        return None
    try:
        return ServerProbe(pid).cpu_seconds()
    except (psutil.Error, OSError):
        return None


def _close(probes: list[Probe]) -> None:
    for probe in probes:
        probe.transport.disconnect(graceful=False)
    probes.clear()


def main(argv: list[str] | None = None) -> int:
    plan, cpu = parse_plan(argv)
    raise_nofile_limit()
    pin_to_cpu(cpu)
    return run(report_until_orphaned(run_cluster_load(plan)))


if __name__ == "__main__":
    raise SystemExit(main())
