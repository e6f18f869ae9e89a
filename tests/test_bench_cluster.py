"""End-to-end runs of ``agentcast bench cluster`` with tiny numbers (no timing assertions).

They need Redis on 127.0.0.1:6379 and NATS on 127.0.0.1:4222, like the other cluster tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from agentcast.bench import cluster
from agentcast.bench.cluster import broker_url, run_cluster_cli
from agentcast.bench.cluster_load import ClusterLoadPlan, parse_plan, spread
from agentcast.bench.cluster_result import SINGLE_KEYS
from agentcast.cli import main

NODES = 2
SUBSCRIBERS = 20
MESSAGES = 20

RESULT_KEYS = {
    "bench",
    "mode",
    "broker",
    "nodes",
    "subscribers",
    "messages",
    "size",
    "rate",
    "cluster",
    "single",
    "ratio",
    "pinned",
    "loadavg_1m_before",
    "python",
    "cpus",
    "timestamp",
}
CLUSTER_KEYS = {
    *SINGLE_KEYS,
    "broker_cpu_s",
    "warmup_rounds",
    "warmup_s",
    "per_node",
}
NODE_KEYS = {
    "node",
    "publisher",
    "subscribers",
    "delivered",
    "lost",
    "out_of_order",
    "disconnects",
    "latency_ms",
    "server_cpu_s",
    "server_rss_before_kb",
    "server_rss_after_kb",
}
RATIO_KEYS = {"delivered_per_s", "latency_p50", "latency_p99", "server_cpu_us_per_delivery"}


def _assert_delivered_all(figures: dict[str, Any]) -> None:
    assert figures["expected"] == SUBSCRIBERS * MESSAGES
    assert figures["delivered"] == SUBSCRIBERS * MESSAGES
    assert figures["lost"] == 0
    assert figures["out_of_order"] == 0
    assert figures["published"] == MESSAGES
    assert figures["acked"] == MESSAGES
    assert figures["publish_errors"] == 0
    assert figures["disconnects"] == 0
    latency = figures["latency_ms"]
    assert set(latency) == {"p50", "p99", "max"}
    assert latency["p50"] <= latency["p99"] <= latency["max"]
    assert isinstance(figures["server_cpu_s"], float | int)
    assert isinstance(figures["delivered_per_s"], float | int)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", ["redis", "nats"])
def test_two_nodes_deliver_every_event_and_compare_with_one(
    broker: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    status = run_cluster_cli(
        broker=broker,
        nodes=NODES,
        subscribers=SUBSCRIBERS,
        messages=MESSAGES,
        size=64,
        rate=0.0,
        as_json=True,
        output=str(output),
    )
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1, captured.out
    assert output.read_text().splitlines() == [lines[0]]
    result = json.loads(lines[0])

    assert status == 0, captured.err
    assert set(result) == RESULT_KEYS
    assert result["bench"] == "cluster"
    assert result["mode"] == "burst"
    assert result["broker"] == broker
    assert (result["nodes"], result["subscribers"], result["messages"]) == (
        NODES,
        SUBSCRIBERS,
        MESSAGES,
    )
    assert set(result["single"]) == set(SINGLE_KEYS)
    assert set(result["ratio"]) == RATIO_KEYS
    assert set(result["pinned"]) == {"nodes", "load"}

    cluster = result["cluster"]
    assert set(cluster) == CLUSTER_KEYS
    _assert_delivered_all(cluster)
    _assert_delivered_all(result["single"])
    assert cluster["warmup_rounds"] >= 1
    per_node = cluster["per_node"]
    assert [node["node"] for node in per_node] == list(range(NODES))
    assert [node["publisher"] for node in per_node] == [True] + [False] * (NODES - 1)
    for node in per_node:
        assert set(node) == NODE_KEYS
        assert node["subscribers"] == SUBSCRIBERS // NODES
        assert node["delivered"] == node["subscribers"] * MESSAGES
        assert node["lost"] == 0
        assert node["out_of_order"] == 0
        assert isinstance(node["server_cpu_s"], float | int)
    assert result["ratio"]["delivered_per_s"] is not None
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.timeout(180)
def test_an_unreachable_broker_gives_no_result_and_leaves_no_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cluster.BROKER_URLS, "redis", "redis://127.0.0.1:1/0?prefix={prefix}")
    output = tmp_path / "never.jsonl"
    status = run_cluster_cli(
        broker="redis",
        nodes=NODES,
        subscribers=SUBSCRIBERS,
        messages=MESSAGES,
        size=64,
        rate=0.0,
        as_json=True,
        output=str(output),
    )
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert "agentcast bench cluster: the server was not ready" in captured.err
    assert not output.exists()
    assert psutil.Process().children(recursive=True) == []


def test_spread_differs_by_at_most_one() -> None:
    assert spread(3000, 3) == [1000, 1000, 1000]
    assert spread(10, 3) == [4, 3, 3]
    assert spread(2, 2) == [1, 1]
    assert sum(spread(1001, 7)) == 1001


def test_the_load_plan_survives_its_command_line() -> None:
    plan = ClusterLoadPlan(
        urls=("ws://127.0.0.1:1/v1/ws", "ws://127.0.0.1:2/v1/ws"),
        server_pids=(11, 12),
        subscribers=20,
        messages=5,
        size=64,
        rate=10.0,
        connect_timeout=3.0,
        drain_timeout=4.0,
        warmup_timeout=5.0,
        broker_pid=13,
        quiet=True,
    )
    assert parse_plan([*plan.to_args(), "--cpu=1"]) == (plan, 1)


def test_each_run_has_a_broker_prefix_of_its_own() -> None:
    assert broker_url("redis", "p1") == "redis://127.0.0.1:6379/0?prefix=p1"
    assert broker_url("nats", "p1") == "nats://127.0.0.1:4222?prefix=p1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "redis", "--nodes", "1"], "--nodes must be between"),
        (["--broker", "nats", "--nodes", "3", "--subscribers", "2"], "at least --nodes"),
        (["--broker", "redis", "--messages", "0"], "--messages must be at least 1"),
        (["--broker", "redis", "--rate", "-1"], "--rate must not be negative"),
    ],
)
def test_bad_arguments_exit_with_status_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", "cluster", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_the_broker_is_required() -> None:
    result = CliRunner().invoke(main, ["bench", "cluster"])
    assert result.exit_code == 2
    assert "--broker" in result.output
