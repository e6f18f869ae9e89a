"""The fan-out benchmark's peers: each one really runs and delivers everything (tiny numbers,
no timing assertions), the comparison rows and their ratios, the plots and the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from agentcast.bench.fanout import run_fanout_cli
from agentcast.bench.peers.cdf import CDF_QUANTILES, latency_cdf_ms
from agentcast.bench.peers.clients import NatsStream, peer_payload
from agentcast.bench.peers.compare import comparison_row, drain_timeout_for, ordered
from agentcast.bench.plot import load_rows, markdown_table
from agentcast.cli import main
from tests.test_bench_fanout import RESULT_KEYS

SUBSCRIBERS = 20
MESSAGES = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _single(server: str, output: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    status = run_fanout_cli(
        subscribers=SUBSCRIBERS,
        messages=MESSAGES,
        size=64,
        rate=0.0,
        server=server,
        idle=False,
        as_json=True,
        output=str(output),
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result: dict[str, Any] = json.loads(lines[0])
    assert status == 0, result
    return result


@pytest.mark.timeout(180)
@pytest.mark.parametrize("server", ["socketio", "ws-redis", "nats-ws", "socketio-node"])
def test_each_peer_delivers_every_event_in_order(
    server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = _single(server, tmp_path / "out.jsonl", capsys)
    assert set(result) == RESULT_KEYS
    assert result["server"] == server
    assert result["delivered"] == SUBSCRIBERS * MESSAGES
    assert result["lost"] == 0
    assert result["out_of_order"] == 0
    assert result["published"] == MESSAGES
    assert result["acked"] == MESSAGES
    assert result["publish_errors"] == 0
    assert result["disconnects"] == 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert isinstance(result["server_cpu_s"], float | int)
    assert result["server_rss_after_kb"] > 0


@pytest.mark.timeout(120)
def test_comparison_measures_every_server_at_every_count(tmp_path: Path) -> None:
    output = tmp_path / "peers.jsonl"
    args = ["bench", "fanout", "--subscribers", "5,10", "--messages", "6", "--json"]
    args += ["--server", "nats-ws,agentcast", "--output", str(output)]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(row["subscribers"], row["server"]) for row in rows] == [
        (5, "agentcast"),
        (5, "nats-ws"),
        (10, "agentcast"),
        (10, "nats-ws"),
    ]
    assert len({row["run"] for row in rows}) == 1
    for row in rows:
        assert row["delivered"] == row["subscribers"] * 6
        assert row["lost"] == 0
        assert row["publisher_disconnected"] is False
        assert len(row["latency_cdf_ms"]) == len(CDF_QUANTILES)
        assert set(row) == RESULT_KEYS | {
            "run",
            "drain_timeout_s",
            "publisher_disconnected",
            "latency_cdf_ms",
            "agentcast_advantage",
        }
    assert rows[0]["agentcast_advantage"]["delivered_per_s"] == 1.0
    assert isinstance(rows[1]["agentcast_advantage"]["delivered_per_s"], float)


@pytest.mark.parametrize(
    ("server", "subscribers"),
    [("agentcast,agentcast", "5"), ("agentcast,other", "5"), ("agentcast", "5,x"), ("", "5")],
)
def test_bad_lists_exit_2(server: str, subscribers: str, tmp_path: Path) -> None:
    args = ["bench", "fanout", "--subscribers", subscribers, "--server", server, "--json"]
    outcome = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "never.jsonl")])
    assert outcome.exit_code == 2
    assert "agentcast bench fanout:" in outcome.stderr
    assert not (tmp_path / "never.jsonl").exists()


def _row(server: str, subscribers: int, per_s: float, cpu_us: float) -> dict[str, Any]:
    latencies = [int((i + 1) * 1e5 * (1 + cpu_us)) for i in range(100)]
    result = {
        "bench": "fanout",
        "server": server,
        "subscribers": subscribers,
        "expected": subscribers * 10,
        "delivered": subscribers * 10,
        "lost": 0,
        "delivered_per_s": per_s,
        "server_cpu_us_per_delivery": cpu_us,
        "latency_ms": {"p50": 5.0, "p99": 10.0, "max": 11.0},
        "rss_per_connection_kb": 16.0,
    }
    reference = {"delivered_per_s": 300_000.0, "server_cpu_us_per_delivery": 2.0}
    measured = {"latency_cdf_ms": latency_cdf_ms(latencies)}
    return comparison_row(result, measured, reference, run="r2", drain_timeout=10.0)


def test_plot_writes_pngs_and_prints_the_table(tmp_path: Path) -> None:
    results = tmp_path / "recorded.jsonl"
    rows = [
        _row(server, count, per_s / (count / 1000), cpu)
        for count in (1000, 10000)
        for server, per_s, cpu in (("agentcast", 300_000.0, 2.0), ("socketio", 30_000.0, 20.0))
    ]
    older = {**rows[0], "run": "r1", "delivered_per_s": 1.0}
    lines = [json.dumps({"bench": "outbox"}), json.dumps(older), *map(json.dumps, rows)]
    results.write_text("\n".join(lines) + "\n")
    out = tmp_path / "img"
    outcome = CliRunner().invoke(
        main, ["bench", "plot", str(results), "--out", str(out), "--markdown"]
    )
    assert outcome.exit_code == 0, outcome.output
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "fanout-cpu-per-delivery.png",
        "fanout-latency-cdf-1000.png",
        "fanout-latency-cdf-10000.png",
        "fanout-throughput.png",
    ]
    for path in out.iterdir():
        assert path.read_bytes().startswith(PNG_MAGIC)
    table = [line for line in outcome.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4
    assert all(line.count("|") == 13 for line in table)
    assert "| 10,000 | socketio |" in table[-1]
    assert "10x" in table[-1]
    assert load_rows(results, "r1") == [older]
    assert load_rows(results) == rows


def test_markdown_table_shows_a_failed_server() -> None:
    table = markdown_table([{"subscribers": 10, "server": "nats-ws", "error": "no binary"}])
    assert "| 10 | nats-ws | no result: no binary |" in table
    assert all(line.count("|") == 13 for line in table.splitlines())


def test_plot_refuses_a_file_without_comparison_rows(tmp_path: Path) -> None:
    results = tmp_path / "single.jsonl"
    results.write_text(json.dumps({"bench": "fanout", "server": "agentcast"}) + "\n")
    outcome = CliRunner().invoke(main, ["bench", "plot", str(results), "--out", str(tmp_path)])
    assert outcome.exit_code != 0
    assert "no fanout comparison rows" in outcome.output


def test_nats_stream_reassembles_split_and_joined_operations() -> None:
    stream = NatsStream()
    payload = b'{"s":1,"t":2,"p":""}'
    wire = b"INFO {}\r\nMSG bench.fanout.t 1 %d\r\n%s\r\nPING\r\n+OK\r\n" % (
        len(payload),
        payload,
    )
    ops: list[tuple[bytes, bytes | None]] = []
    for piece in (wire[:5], wire[5:20], wire[20:31], wire[31:]):
        ops += stream.feed(piece)
    assert ops == [
        (b"INFO {}", None),
        (b"MSG bench.fanout.t 1 20", payload),
        (b"PING", None),
        (b"+OK", None),
    ]
    assert stream.feed(b"") == []


@pytest.mark.parametrize("size", [64, 200, 1000])
def test_peer_payload_is_padded_to_size(size: int) -> None:
    payload = peer_payload(9, size, 123_456_789_012)
    assert len(payload) == size
    assert orjson.loads(payload)["s"] == 9
    assert orjson.loads(payload)["t"] == 123_456_789_012


def test_comparison_helpers() -> None:
    assert ordered(["naive", "agentcast", "socketio"]) == ["agentcast", "naive", "socketio"]
    assert drain_timeout_for(100) == 10.0
    assert drain_timeout_for(1_000_000) == 100.0
    cdf = latency_cdf_ms([3_000_000, 1_000_000, 2_000_000])
    assert cdf[0] == [0.5, 1.0]
    assert cdf[-1] == [100.0, 3.0]
    assert latency_cdf_ms([]) == []
