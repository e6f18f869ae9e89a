"""``agentcast demo``: a node plus a simulated multi-agent workload, shown as it runs.

:func:`run_demo` starts a real :class:`~agentcast.node.Node` in this process, prints where
it listens, runs the :class:`~agentcast.demo.workload.Workload` against it over loopback
WebSockets, and refreshes a view (a live panel twice a second on a terminal, else one plain
line per second) until SIGINT/SIGTERM arrives or, when ``duration`` > 0, that many seconds
after every client has connected and publishing began. Shutdown
drains the workload, closes every client, stops the node and prints a summary.
"""

from __future__ import annotations

import asyncio
import sys
import time

from agentcast.config import ServerConfig
from agentcast.dashboard import dashboard_url
from agentcast.demo.stats import NodeSampler, Snapshot, Summary
from agentcast.demo.view import Banner, LiveView, PlainView, View, summary_lines
from agentcast.demo.workload import Workload, wait_any, wait_event
from agentcast.node import Node
from agentcast.runtime import run, setup_logging, stop_on_signals

LIVE_INTERVAL = 0.5
PLAIN_INTERVAL = 1.0


def run_demo(
    config: ServerConfig,
    *,
    sessions: int,
    agents: int,
    rate: float,
    duration: float,
    live: bool,
) -> int:
    """Run the demo and return the process exit code (0 after a clean stop, 1 if the
    workload failed, 2 for invalid arguments). ``live`` is ignored when stdout is not a
    terminal."""
    if sessions < 1 or agents < 1 or rate <= 0 or duration < 0:
        print(
            "agentcast demo: need --sessions >= 1, --agents >= 1, --rate > 0, --duration >= 0",
            file=sys.stderr,
        )
        return 2
    setup_logging(config.log_level)
    live = live and sys.stdout.isatty()
    return run(
        _demo(config, sessions=sessions, agents=agents, rate=rate, duration=duration, live=live)
    )


async def _stop_after(stop: asyncio.Event, started: asyncio.Event, duration: float) -> None:
    """Set ``stop`` ``duration`` seconds after the workload started publishing."""
    await wait_any(started, stop)
    if not await wait_event(stop, duration):
        stop.set()


def _snapshot(workload: Workload, sampler: NodeSampler) -> Snapshot:
    now = time.monotonic()
    rows, total = workload.rows(now)
    return Snapshot(
        elapsed=now - workload.start,
        phase=workload.phase,
        sessions=rows,
        total=total,
        node=sampler.sample(now),
    )


async def _refresh(view: View, workload: Workload, sampler: NodeSampler, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        view.update(_snapshot(workload, sampler))


def _summary(workload: Workload, sampler: NodeSampler, agents: int) -> Summary:
    now = time.monotonic()
    total = workload.total
    quantiles = workload.run_latency.quantiles(now, (0.5, 0.99))
    return Summary(
        elapsed=now - workload.start,
        sessions=len(workload.sessions),
        agents_per_session=agents,
        agents_connected=total.agents_ever,
        agents_total=total.agents_total,
        observers_connected=total.observers_ever,
        observers_total=total.observers_total,
        published=total.published,
        delivered_agents=total.delivered_agents,
        delivered_observers=total.delivered_observers,
        unread=total.unread,
        missing=total.missing,
        p50_ms=quantiles[0] if quantiles else None,
        p99_ms=quantiles[1] if quantiles else None,
        latency_samples=workload.run_latency.count(now),
        connections_opened=sampler.hub.stats.connections_opened,
        node=sampler.sample(now),
    )


def _describe(exc: BaseException) -> list[str]:
    """The leaf errors of a (nested) exception group, one line each."""
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in _describe(inner)]
    return [f"{type(exc).__name__}: {exc}"]


async def _demo(
    config: ServerConfig,
    *,
    sessions: int,
    agents: int,
    rate: float,
    duration: float,
    live: bool,
) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    node = Node(config)
    try:
        await node.start()
    except OSError as exc:
        await node.stop()
        print(f"agentcast demo: cannot listen on {config.host}: {exc}", file=sys.stderr)
        return 1
    try:
        assert node.hub is not None
        banner = Banner(node.node_id, node.ws_url, node.http_url)
        for line in banner.lines():
            print(line, flush=True)
        print(f"  dashboard  {dashboard_url(node.http_url, node.ws_url)}", flush=True)
        workload = Workload(node.ws_url, sessions=sessions, agents=agents, rate=rate, stop=stop)
        sampler = NodeSampler(node.hub, workload.start)
        code = await _drive(workload, sampler, banner, duration=duration, live=live)
        summary = _summary(workload, sampler, agents)
    finally:
        await node.stop()
    for line in summary_lines(summary):
        print(line, flush=True)
    return code


async def _drive(
    workload: Workload, sampler: NodeSampler, banner: Banner, *, duration: float, live: bool
) -> int:
    """Run the workload with its view and stop timer; 1 if the workload failed."""
    view: View = LiveView(banner) if live else PlainView()
    failure: Exception | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            timer = None
            if duration > 0:
                timer = tasks.create_task(_stop_after(workload.stop, workload.started, duration))
            every = LIVE_INTERVAL if live else PLAIN_INTERVAL
            refresher = tasks.create_task(_refresh(view, workload, sampler, every))
            await workload.run()
            refresher.cancel()
            if timer is not None:
                timer.cancel()
        view.update(_snapshot(workload, sampler))
    except Exception as exc:
        failure = exc
    finally:
        view.close()
    if failure is None:
        return 0
    for line in _describe(failure):
        print(f"agentcast demo: workload failed: {line}", file=sys.stderr)
    return 1
