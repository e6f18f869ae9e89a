"""``agentcast bench sessions``: tiny end-to-end runs and its pure planning/aggregation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agentcast.bench.sessions_cli import PRESETS, apply_preset
from agentcast.bench.sessions_clients import NOT_STAMPED, Tally, publish_frame
from agentcast.bench.sessions_plan import (
    SessionsPlan,
    chat_topic,
    deliveries_per_publish,
    inbox_topic,
    is_direct,
    message_of,
    messages_due,
    observer_pattern,
    publish_rate,
    split_sessions,
)
from agentcast.bench.sessions_result import (
    Window,
    build_result,
    histogram_window,
    nearest_rank,
    percentiles_ms,
)
from agentcast.bench.sessions_server import parse_stats
from agentcast.bench.sessions_table import cost_fit, load_rows, markdown_table, quiet_rows
from agentcast.cli import main
from agentcast.protocol.topics import matches

RESULT_KEYS = {
    "bench",
    "sessions",
    "agents",
    "observers",
    "connections",
    "target_deliveries_per_s",
    "target_publishes_per_s",
    "connected",
    "published",
    "acked",
    "publish_errors",
    "expected",
    "received",
    "missing",
    "settled",
    "client_disconnects",
    "deliveries_per_s",
    "publishes_per_s",
    "e2e_latency_ms",
    "ack_latency_ms",
    "send_lag_ms",
    "server_cpu_s",
    "server_cpu_us_per_delivery",
    "load_cpu_s",
    "server_runqueue_wait_s",
    "load_runqueue_wait_s",
    "load_gc_longest_ms",
    "server_write_latency_ms",
    "queue_at_write",
    "queued_max_at_end",
    "drops",
    "slow_disconnects",
    "pinned",
    "timestamp",
}
PERCENTILES = {"p50", "p99", "p999", "max"}


def _plan(**overrides: Any) -> SessionsPlan:
    values: dict[str, Any] = {
        "sessions": 4,
        "agents": 5,
        "observers": 2,
        "rate": 700.0,
        "seconds": 1.0,
        "warmup": 0.0,
        "size": 64,
        "direct": 0.5,
        "processes": 1,
    }
    values.update(overrides)
    return SessionsPlan(**values)


def _invoke(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], Path]:
    output = tmp_path / "sessions.jsonl"
    args = ["bench", "sessions", "--sessions", "2", "--agents", "5", "--observers", "1"]
    args += ["--rate", "600", "--seconds", "1", "--warmup", "0.3", "--json"]
    args += ["--output", str(output), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    return json.loads(lines[0]), output


@pytest.mark.timeout(120)
def test_a_tiny_run_delivers_everything_and_reports_every_field(tmp_path: Path) -> None:
    result, output = _invoke(tmp_path)
    assert set(result) >= RESULT_KEYS
    assert result["bench"] == "sessions"
    assert result["connections"] == result["connected"] == 12
    assert result["published"] > 0
    assert result["acked"] == result["published"]
    assert result["publish_errors"] == 0
    assert result["expected"] > 0
    assert result["received"] == result["expected"]
    assert result["missing"] == 0
    assert result["settled"] is True
    assert result["client_disconnects"] == 0
    assert result["drops"] == 0
    assert result["slow_disconnects"] == 0
    for key in ("e2e_latency_ms", "ack_latency_ms", "send_lag_ms"):
        assert set(result[key]) == PERCENTILES
        assert result[key]["p50"] is not None
    assert result["server_write_latency_ms"]["writes"] > 0
    assert result["server_runqueue_wait_s"] >= 0
    assert result["load_runqueue_wait_s"] >= 0
    assert result["deliveries_per_s"] > 0
    assert output.read_text().splitlines() == [json.dumps(result, ensure_ascii=False)]


@pytest.mark.timeout(120)
def test_two_load_processes_share_the_sessions_without_loss(tmp_path: Path) -> None:
    result, _ = _invoke(tmp_path, "--processes", "2", "--direct", "0.25", "--global-observers", "2")
    assert result["processes"] == 2
    assert result["global_observers"] == 2
    assert result["connected"] == result["connections"] == 14
    assert result["missing"] == 0
    assert result["received"] == result["expected"] > 0
    assert result["acked"] == result["published"] > 0


def test_bad_arguments_exit_2_without_starting_anything() -> None:
    result = CliRunner().invoke(main, ["bench", "sessions", "--agents", "1", "--json"])
    assert result.exit_code == 2
    assert "--agents must be at least 2" in result.stderr


def test_the_preset_fills_only_what_the_command_line_left_out() -> None:
    options = {"sessions": 20, "agents": 100, "observers": 5, "rate": 1.0, "seconds": 3.0}
    chosen = apply_preset(options, "target", {"agents"})
    assert chosen == {**PRESETS["target"], "agents": 100, "seconds": 3.0}
    target = PRESETS["target"]
    assert target["sessions"] * (target["agents"] + target["observers"]) == 10_000
    assert apply_preset(options, None, set()) == options


def test_plan_arithmetic() -> None:
    plan = _plan(direct=0.0)
    assert plan.connections == 4 * 7
    assert deliveries_per_publish(5, 2, 0.0) == 7
    assert deliveries_per_publish(5, 2, 1.0) == 3
    assert deliveries_per_publish(5, 2, 0.5) == 5
    assert publish_rate(plan) == pytest.approx(100.0)
    assert plan.problem() is None
    assert _plan(agents=1).problem() == "--agents must be at least 2"
    assert _plan(processes=5).problem() == "--processes must be between 1 and --sessions"
    assert _plan(direct=1.5).problem() == "--direct must be between 0 and 1"
    tenant_wide = _plan(direct=0.0, global_observers=3)
    assert tenant_wide.connections == 4 * 7 + 3
    assert publish_rate(tenant_wide) == pytest.approx(70.0)


@pytest.mark.parametrize(("sessions", "processes"), [(1, 1), (5, 2), (50, 3), (7, 7)])
def test_split_sessions_covers_every_session_once(sessions: int, processes: int) -> None:
    shares = split_sessions(sessions, processes)
    assert len(shares) == processes
    covered = [n for first, count in shares for n in range(first, first + count)]
    assert covered == list(range(sessions))
    sizes = [count for _, count in shares]
    assert max(sizes) - min(sizes) <= 1


@given(
    st.integers(0, 10**6),
    st.integers(1, 60),
    st.integers(2, 300),
    st.floats(0.0, 1.0, allow_nan=False),
)
def test_a_message_never_goes_to_its_own_senders_inbox(
    i: int, sessions: int, agents: int, direct: float
) -> None:
    msg = message_of(i, sessions, agents, direct)
    assert 0 <= msg.session < sessions
    assert 0 <= msg.sender < agents
    if msg.target is not None:
        assert 0 <= msg.target < agents
        assert msg.target != msg.sender


def test_messages_spread_over_sessions_senders_and_kinds() -> None:
    messages = [message_of(i, 3, 4, 0.25) for i in range(1200)]
    assert Counter(m.session for m in messages) == {0: 400, 1: 400, 2: 400}
    assert set(Counter((m.session, m.sender) for m in messages).values()) == {100}
    assert sum(m.target is not None for m in messages) == 300
    assert sum(is_direct(i, 0.0) for i in range(100)) == 0
    assert sum(is_direct(i, 1.0) for i in range(100)) == 100


def test_messages_due_follows_the_schedule() -> None:
    assert messages_due(-0.1, 100.0, 50) == 0
    assert messages_due(0.0, 100.0, 50) == 1
    assert messages_due(0.1, 100.0, 50) == 11
    assert messages_due(10.0, 100.0, 50) == 50


def test_topics_reach_the_right_subscribers() -> None:
    assert matches(observer_pattern(3), chat_topic(3))
    assert matches(observer_pattern(3), inbox_topic(3, 7))
    assert not matches(observer_pattern(3), chat_topic(4))
    assert not matches(observer_pattern(3), inbox_topic(30, 7))


def test_percentiles_in_milliseconds() -> None:
    values = [n * 1_000_000 for n in range(1, 1001)]
    assert percentiles_ms(values) == {"p50": 500.0, "p99": 990.0, "p999": 999.0, "max": 1000.0}
    assert percentiles_ms([]) == {"p50": None, "p99": None, "p999": None, "max": None}
    assert nearest_rank([5], 999) == 5
    assert nearest_rank(list(range(1, 2001)), 999) == 1998
    assert nearest_rank(list(range(1, 2001)), 1) == 2


def test_histogram_window_reads_the_difference_of_two_snapshots() -> None:
    bounds = (1, 2, 4)
    start = [5, 0, 0, 0]
    end = [5 + 90, 9, 1, 0]
    assert histogram_window(bounds, start, end) == {"writes": 100, "p50": 1, "p99": 2, "max": 4}
    assert histogram_window((0.001,), [0, 0], [0, 3], 1e3) == {
        "writes": 3,
        "p50": None,
        "p99": None,
        "max": None,
    }
    assert histogram_window(bounds, start, start)["writes"] == 0


def _stats(deliveries: int, publishes: int, writes: int) -> dict[str, Any]:
    return {
        "deliveries": deliveries,
        "publishes": publishes,
        "writes": writes,
        "drops": 0,
        "slow_disconnects": 0,
        "queued_max": 0,
        "queue_counts": [0] * 13,
        "write_latency_counts": [0] * 15,
    }


def test_build_result_adds_up_the_load_processes() -> None:
    loads = [
        {"connections": 14, "published": 10, "acked": 10, "expected": 50, "received": 50},
        {"connections": 14, "published": 10, "acked": 9, "expected": 50, "received": 47},
    ]
    window = Window(2.0, 1.0, 0.5, _stats(0, 0, 0), _stats(100, 20, 50), _stats(100, 20, 50))
    result = build_result(_plan(), loads, {"e2e": [1_000_000]}, window, (0, 1), 0.5)
    assert result["connected"] == 28
    assert result["expected"] == 100
    assert result["missing"] == 3
    assert result["acked"] == 19
    assert result["deliveries_per_s"] == 50.0
    assert result["server_cpu_us_per_delivery"] == 10000.0
    assert result["writes_per_delivery"] == 0.5
    assert result["e2e_latency_ms"]["p50"] == 1.0
    assert result["ack_latency_ms"]["p50"] is None
    assert result["settled"] is False


def test_the_tally_reads_send_times_and_skips_unstamped_events() -> None:
    tally = Tally()
    frame = publish_frame(7, b"t.s1.chat", 123456789, b"xx")
    command = orjson.loads(frame)
    assert command["payload"] == {"t": 123456789, "p": "xx"}
    stamped = orjson.dumps({"type": "event", "event": {"payload": command["payload"]}})
    presence = orjson.dumps({"type": "event", "event": {"payload": {"type": "join"}}})
    reply = orjson.dumps({"type": "reply", "id": 7, "ok": True})
    assert tally.sent_of(stamped) == 123456789
    assert tally.sent_of(presence) == NOT_STAMPED
    assert tally.sent_of(reply) is None
    tally.finish()
    assert tally.settled.is_set()


def test_parse_stats() -> None:
    assert parse_stats('STATS {"deliveries": 3}') == {"deliveries": 3}
    with pytest.raises(ValueError, match="not a stats line"):
        parse_stats("READY 1")


def test_the_markdown_table_has_one_line_per_sessions_row() -> None:
    row = {
        "bench": "sessions",
        "timestamp": "2026-01-01T00:00:00Z",
        "connections": 12,
        "sessions": 2,
        "agents": 5,
        "observers": 1,
        "pinned": {"server": 0, "load": 1},
        "e2e_latency_ms": {"p50": 1.5, "p99": None},
        "server_write_latency_ms": {"p99": 0.5},
        "queue_at_write": {"max": None},
    }
    lines = ["", json.dumps(row), json.dumps({"bench": "fanout"})]
    table = markdown_table(load_rows(lines)).splitlines()
    assert len(table) == 3
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert len(cells) == len(header)
    by_name = dict(zip(header, cells, strict=True))
    assert by_name["sessions x (agents + observers) [+ tenant-wide]"] == "2 x (5 + 1)"
    assert load_rows([json.dumps({**row, "global_observers": 3})])[0]["global_observers"] == 3
    wide = markdown_table([{**row, "global_observers": 3}]).splitlines()[2]
    assert "| 2 x (5 + 1) + 3 |" in wide
    assert by_name["pinned"] == "yes"
    assert by_name["e2e p50 ms"] == "1.5"
    assert by_name["e2e p99 ms"] == "n/a"
    assert by_name["node write p99 ms"] == "≤ 0.5"
    assert by_name["queue at write max"] == "n/a"


def test_quiet_rows_keep_runs_that_barely_waited_for_a_cpu() -> None:
    rows = [
        {"server_runqueue_wait_s": 0.2, "load_runqueue_wait_s": 0.3},
        {"server_runqueue_wait_s": 0.2, "load_runqueue_wait_s": 5.0},
        {"server_runqueue_wait_s": None, "load_runqueue_wait_s": 0.1},
        {},
    ]
    assert quiet_rows(rows, 1.0) == rows[:1]
    assert quiet_rows(rows, 5.0) == rows[:2]


def test_the_cost_fit_recovers_a_line() -> None:
    rows = [
        {"writes_per_delivery": w, "server_cpu_us_per_delivery": 1.5 + 10.0 * w}
        for w in (0.2, 0.5, 1.0)
    ]
    fit = cost_fit([*rows, {"writes_per_delivery": None}])
    assert fit is not None
    fixed, per_write, used = fit
    assert fixed == pytest.approx(1.5)
    assert per_write == pytest.approx(10.0)
    assert used == 3
    assert cost_fit(rows[:1]) is None
    assert cost_fit([rows[0], rows[0]]) is None
