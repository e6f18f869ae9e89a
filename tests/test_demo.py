"""``agentcast demo``: the sliding window helper, the summary, and the command end to end."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys

import pytest

from agentcast.client import Client
from agentcast.demo.stats import NodeRow, Summary, queue_peak
from agentcast.demo.view import summary_lines
from agentcast.demo.window import SlidingWindow
from agentcast.demo.workload import Workload, agent_names, latency_ms
from agentcast.hub.stats import QUEUE_BUCKETS
from agentcast.node import Node

DEMO = [sys.executable, "-c", "from agentcast.cli import main; main()", "demo"]
FREE_PORTS = ["--port", "0", "--http-port", "0"]

# -- the sliding window --------------------------------------------------------------------


def test_window_rate_counts_events_over_covered_time() -> None:
    window = SlidingWindow(0.0, span=5.0, resolution=0.25)
    for i in range(10):
        window.add(i / 10)
    assert window.count(1.0) == 10
    assert window.rate(1.0) == pytest.approx(10.0)
    window.add(4.0, 30)
    # Covered time is the whole span now: 40 events over 5 s.
    assert window.rate(4.99) == pytest.approx(40 / 4.99)


def test_window_young_window_divides_by_time_since_start() -> None:
    window = SlidingWindow(100.0, span=5.0, resolution=0.25)
    for _ in range(5):
        window.add(100.5)
    assert window.rate(101.0) == pytest.approx(5.0)
    assert window.rate(100.0) == 0.0


def test_window_forgets_buckets_older_than_span() -> None:
    window = SlidingWindow(0.0, span=5.0, resolution=0.25)
    for _ in range(100):
        window.observe(0.1, 1000.0)
    window.observe(6.0, 1.0)
    window.observe(6.0, 3.0)
    assert window.count(6.0) == 2
    assert window.quantiles(6.0, (0.5, 1.0)) == [1.0, 3.0]
    assert window.count(20.0) == 0
    assert window.rate(20.0) == 0.0
    assert window.quantiles(20.0, (0.5,)) is None


def test_window_quantiles_are_nearest_rank() -> None:
    window = SlidingWindow(0.0)
    values = list(range(1, 101))
    random.Random(7).shuffle(values)
    for value in values:
        window.observe(1.0, float(value))
    assert window.quantiles(1.0, (0.0, 0.5, 0.99, 1.0)) == [1.0, 50.0, 99.0, 100.0]


def test_window_keeps_bounded_samples_but_counts_everything() -> None:
    window = SlidingWindow(0.0, max_samples=10, rng=random.Random(1))
    for value in range(1000):
        window.observe(1.0, float(value))
    assert window.count(1.0) == 1000
    quantiles = window.quantiles(1.0, (0.0, 1.0))
    assert quantiles is not None
    low, high = quantiles
    # Ten samples drawn from 0..999: the extremes are sampled values, not the true ones.
    assert 0.0 <= low <= high <= 999.0
    assert (low, high) != (0.0, 999.0)


def test_window_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0.0, span=1.0, resolution=2.0)
    with pytest.raises(ValueError):
        SlidingWindow(0.0, max_samples=0)


# -- small helpers -------------------------------------------------------------------------


def test_agent_names_are_distinct_and_valid_topic_segments() -> None:
    names = agent_names(30)
    assert len({name for name, _ in names}) == 30
    assert names[0] == ("planner-1", "planner")
    assert all(re.fullmatch(r"[A-Za-z0-9_:@~=-]{1,64}", name) for name, _ in names)


def test_latency_ms_reads_the_send_time() -> None:
    assert latency_ms({"sent_ns": 1_000_000}, 3_500_000) == pytest.approx(2.5)
    assert latency_ms({"sent_ns": "x"}, 1) is None
    assert latency_ms(None, 1) is None


def test_queue_peak_names_the_highest_bucket_seen() -> None:
    counts = [0] * (len(QUEUE_BUCKETS) + 1)
    assert queue_peak(counts) == "0"
    counts[0] = 5
    assert queue_peak(counts) == "1"
    counts[3] = 1
    assert queue_peak(counts) == "≤8"
    counts[-1] = 1
    assert queue_peak(counts) == f">{QUEUE_BUCKETS[-1]}"


def _node_row(**changes: object) -> NodeRow:
    values: dict[str, object] = {
        "connections": 0,
        "subscriptions": 0,
        "publishes": 10,
        "deliveries": 40,
        "writes": 20,
        "drops": {},
        "slow_disconnects": 0,
        "queue_now": 0,
        "queue_peak": "≤2",
        "publish_rate": 0.0,
        "delivery_rate": 0.0,
        "write_rate": 0.0,
    }
    values.update(changes)
    return NodeRow(**values)  # type: ignore[arg-type]


def _summary(unread: int = 0, missing: int = 0) -> Summary:
    return Summary(
        elapsed=3.0,
        sessions=2,
        agents_per_session=5,
        agents_connected=10,
        agents_total=10,
        observers_connected=2,
        observers_total=2,
        published=10,
        delivered_agents=30,
        delivered_observers=10,
        unread=unread,
        missing=missing,
        p50_ms=0.5,
        p99_ms=12.25,
        latency_samples=40,
        connections_opened=12,
        node=_node_row(drops={"drop_oldest": 3}),
    )


def test_summary_reports_losses_only_when_there_are_some() -> None:
    clean = "\n".join(summary_lines(_summary()))
    assert "published 10, delivered 40 (agents 30, observers 10)" in clean
    assert "p50 0.50 ms, p99 12.2 ms" in clean
    assert "2.00 deliveries/write" in clean
    assert "dropped     3 (drop_oldest 3) by slow-consumer policies" in clean
    assert "lost" not in clean and "missing" not in clean
    lossy = "\n".join(summary_lines(_summary(unread=2, missing=1)))
    assert "lost        2 publishes" in lossy
    assert "missing     1 agent deliveries" in lossy


# -- the workload against an in-process node -------------------------------------------------


async def test_workload_publishes_correlated_reactions_and_drains(node: Node) -> None:
    stop = asyncio.Event()
    workload = Workload(node.ws_url, sessions=2, agents=3, rate=50.0, stop=stop, seed=3)
    seen: dict[str, str] = {}
    async with Client(node.ws_url, name="watcher") as watcher:
        sub = await watcher.subscribe("demo.>")
        runner = asyncio.create_task(workload.run())
        reaction = inbox = None
        async with asyncio.timeout(30):
            async for event in sub:
                seen[event.id] = event.topic
                session = event.topic.split(".")[1]
                assert event.correlation_id == session
                assert event.headers["key"] == event.payload["from"]
                if event.topic.endswith(".inbox"):
                    inbox = event
                if event.causation_id in seen:
                    reaction = event
                if reaction is not None and inbox is not None:
                    break
        stop.set()
        await asyncio.wait_for(runner, 30)
    assert reaction is not None and inbox is not None
    assert workload.phase == "stopped"
    total = workload.total
    assert total.agents_ever == 6 and total.observers_ever == 2
    assert total.agents_connected == 0 and total.observers_connected == 0
    assert total.published > 0
    assert total.missing == 0 and total.unread == 0
    assert total.delivered_observers == total.published
    assert node.hub is not None
    assert node.hub.stats.publishes == total.published


# -- the command end to end ----------------------------------------------------------------


def _check_summary(out: str, agents: int, observers: int) -> None:
    connected = re.search(r"agents (\d+)/(\d+), observers (\d+)/(\d+)", out)
    assert connected is not None, out
    assert connected.groups() == (str(agents), str(agents), str(observers), str(observers))
    traffic = re.search(r"published (\d+), delivered (\d+)", out)
    assert traffic is not None, out
    assert int(traffic.group(1)) > 0
    assert int(traffic.group(2)) > 0
    assert f"node connections opened {agents + observers}" in out
    assert "missing" not in out, out
    assert re.search(r"p50 \d[\d.]* ms, p99 \d[\d.]* ms", out), out


def test_demo_command_runs_for_a_duration_and_summarises() -> None:
    args = ["--duration", "3", "--no-live", "--sessions", "2", "--agents", "5", *FREE_PORTS]
    result = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=45, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"websocket\s+ws://127\.0\.0\.1:\d+/v1/ws", out), out
    assert re.search(r"http://127\.0\.0\.1:\d+/metrics", out), out
    assert re.search(r"running\s+agents 10/10 observers 2/2", out), out
    _check_summary(out, agents=10, observers=2)


async def test_demo_command_stops_cleanly_on_sigterm() -> None:
    args = ["--duration", "0", "--no-live", "--sessions", "1", "--agents", "3", *FREE_PORTS]
    proc = await asyncio.create_subprocess_exec(
        *DEMO, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        for _ in range(60):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "".join(seen) + (await proc.stderr.read()).decode()
            seen.append(line)
            if re.search(r"running\s+agents 3/3 observers 1/1 \| pub/s", line):
                break
        else:
            pytest.fail("the demo never reported every client running:\n" + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    _check_summary(rest.decode(), agents=3, observers=1)
