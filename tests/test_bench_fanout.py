"""End-to-end runs of ``agentcast bench fanout`` with tiny numbers (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from agentcast.bench.fanout import run_fanout_cli
from agentcast.bench.load_clients import publish_frame
from agentcast.bench.process import parse_ready
from agentcast.bench.stats import latency_summary_ms, percentile
from agentcast.cli import main

RESULT_KEYS = {
    "bench",
    "mode",
    "server",
    "subscribers",
    "messages",
    "size",
    "rate",
    "expected",
    "delivered",
    "lost",
    "out_of_order",
    "duration_s",
    "delivered_per_s",
    "latency_ms",
    "server_cpu_s",
    "server_cpu_us_per_delivery",
    "load_cpu_s",
    "rss_per_connection_kb",
    "server_rss_before_kb",
    "server_rss_after_kb",
    "connect_s",
    "published",
    "acked",
    "publish_errors",
    "first_error",
    "disconnects",
    "pinned",
    "loadavg_1m_before",
    "python",
    "cpus",
    "timestamp",
}

SUBSCRIBERS = 20
MESSAGES = 20


def _run(
    capsys: pytest.CaptureFixture[str], output: Path, **overrides: Any
) -> tuple[int, dict[str, Any]]:
    args: dict[str, Any] = {
        "subscribers": SUBSCRIBERS,
        "messages": MESSAGES,
        "size": 64,
        "rate": 0.0,
        "server": "agentcast",
        "idle": False,
        "as_json": True,
        "output": str(output),
    }
    args.update(overrides)
    status = run_fanout_cli(**args)
    stdout = capsys.readouterr().out
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    result = json.loads(lines[0])
    assert output.read_text().splitlines() == [lines[0]]
    return status, result


def _assert_delivered_all(result: dict[str, Any]) -> None:
    assert set(result) == RESULT_KEYS
    assert set(result["latency_ms"]) == {"p50", "p99", "max"}
    assert result["expected"] == SUBSCRIBERS * MESSAGES
    assert result["delivered"] == SUBSCRIBERS * MESSAGES
    assert result["lost"] == 0
    assert result["out_of_order"] == 0
    assert result["published"] == MESSAGES
    assert result["acked"] == MESSAGES
    assert result["publish_errors"] == 0
    assert result["disconnects"] == 0
    for key in ("p50", "p99", "max"):
        assert isinstance(result["latency_ms"][key], float | int)
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert isinstance(result["server_cpu_s"], float | int)
    assert isinstance(result["server_cpu_us_per_delivery"], float | int)
    assert isinstance(result["rss_per_connection_kb"], float | int)


@pytest.mark.parametrize("server", ["agentcast", "naive"])
def test_burst_delivers_every_event_in_order(
    server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, result = _run(capsys, tmp_path / "out.jsonl", server=server)
    assert status == 0
    _assert_delivered_all(result)
    assert result["server"] == server
    assert result["mode"] == "burst"
    assert result["subscribers"] == SUBSCRIBERS
    assert result["messages"] == MESSAGES


@pytest.mark.parametrize("server", ["agentcast", "naive"])
def test_paced_delivers_every_event_in_order(
    server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, result = _run(capsys, tmp_path / "out.jsonl", server=server, rate=2000.0)
    assert status == 0
    _assert_delivered_all(result)
    assert result["mode"] == "paced"
    assert result["rate"] == 2000.0


@pytest.mark.parametrize("server", ["agentcast", "naive"])
def test_idle_only_opens_connections(
    server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, result = _run(capsys, tmp_path / "out.jsonl", server=server, idle=True)
    assert status == 0
    assert set(result) == RESULT_KEYS
    assert result["mode"] == "idle"
    assert result["subscribers"] == SUBSCRIBERS
    assert result["messages"] == 0
    assert result["delivered"] == 0
    assert result["lost"] == 0
    assert result["published"] == 0
    assert result["server_cpu_us_per_delivery"] is None
    assert isinstance(result["rss_per_connection_kb"], float | int)
    assert result["server_rss_after_kb"] > 0


def test_cli_prints_json_and_appends_output(tmp_path: Path) -> None:
    output = tmp_path / "results.jsonl"
    output.write_text('{"earlier": true}\n')
    args = ["bench", "fanout", "--subscribers", "5", "--messages", "4", "--json"]
    outcome = CliRunner().invoke(main, [*args, "--server", "naive", "--output", str(output)])
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout.strip())
    assert result["delivered"] == 20
    assert result["lost"] == 0
    lines = output.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1]) == result


@pytest.mark.parametrize(
    "overrides",
    [{"subscribers": 0}, {"messages": 0}, {"size": -1}, {"rate": -1.0}, {"server": "other"}],
)
def test_bad_arguments_exit_2_without_running(
    overrides: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args: dict[str, Any] = {
        "subscribers": 1,
        "messages": 1,
        "size": 8,
        "rate": 0.0,
        "server": "naive",
        "idle": False,
        "as_json": True,
        "output": str(tmp_path / "never.jsonl"),
    }
    args.update(overrides)
    assert run_fanout_cli(**args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "agentcast bench fanout:" in captured.err
    assert not (tmp_path / "never.jsonl").exists()


@pytest.mark.parametrize("size", [64, 200, 1000])
def test_publish_frame_pads_the_payload_to_size(size: int) -> None:
    frame = orjson.loads(publish_frame(7, size, 123_456_789_012))
    assert frame["cmd"] == "publish"
    assert frame["id"] == 7
    assert frame["ack"] is True
    assert frame["payload"]["t"] == 123_456_789_012
    assert len(orjson.dumps(frame["payload"])) == size


def test_percentiles_use_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5], 99) == 5
    assert latency_summary_ms([2_000_000, 1_000_000]) == {"p50": 1.0, "p99": 2.0, "max": 2.0}
    assert latency_summary_ms([]) == {"p50": None, "p99": None, "max": None}


def test_readiness_line_parses_the_port() -> None:
    assert parse_ready("READY 4242\n") == 4242
    with pytest.raises(ValueError):
        parse_ready("listening on 4242")
