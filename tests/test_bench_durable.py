"""End-to-end runs of ``agentcast bench durable`` with tiny numbers (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from agentcast.bench.durable import run_durable_cli
from agentcast.bench.durable_clients import publish_frame, publish_prefix, resume_frame
from agentcast.bench.durable_load import shares
from agentcast.bench.durable_result import complete
from agentcast.bench.server_main import parse_stats
from agentcast.cli import main
from tests.pg import PG_DSN

RESULT_KEYS = {
    "bench",
    "stores",
    "publishers",
    "messages",
    "size",
    "window",
    "topics",
    "resume_events",
    "rows",
    "resume",
    "pinned",
    "loadavg_1m_before",
    "python",
    "cpus",
    "timestamp",
}
ROW_KEYS = {
    "store",
    "publishers",
    "messages",
    "sent",
    "acked",
    "publish_errors",
    "first_error",
    "seq_errors",
    "disconnects",
    "duration_s",
    "acked_per_s",
    "latency_ms",
    "server_cpu_s",
    "server_cpu_us_per_publish",
    "load_cpu_s",
    "store_commits",
    "events_per_commit",
    "connect_s",
}
RESUME_KEYS = {
    "store",
    "events",
    "received",
    "out_of_order",
    "extra",
    "exact",
    "recovered",
    "error",
    "resume_s",
    "reply_ms",
    "first_event_ms",
    "events_per_s",
    "server_cpu_s",
    "server_cpu_us_per_event",
    "publish_s",
}

PUBLISHERS = 2
MESSAGES = 50
RESUME_EVENTS = 200


def _args(output: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "stores": "memory,sqlite",
        "publishers": str(PUBLISHERS),
        "messages": MESSAGES,
        "size": 64,
        "window": 8,
        "resume_events": RESUME_EVENTS,
        "timeout": 60.0,
        "pg_dsn": PG_DSN,
        "as_json": True,
        "output": str(output),
    }
    args.update(overrides)
    return args


def _run(
    capsys: pytest.CaptureFixture[str], output: Path, **overrides: Any
) -> tuple[int, dict[str, Any]]:
    status = run_durable_cli(**_args(output, **overrides))
    stdout = capsys.readouterr().out
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    result = json.loads(lines[0])
    assert output.read_text().splitlines() == [lines[0]]
    return status, result


def _assert_row_complete(row: dict[str, Any]) -> None:
    assert set(row) == ROW_KEYS
    assert set(row["latency_ms"]) == {"p50", "p99", "max"}
    assert row["publishers"] == PUBLISHERS
    assert row["messages"] == MESSAGES
    assert row["sent"] == MESSAGES
    assert row["acked"] == MESSAGES
    assert row["publish_errors"] == 0
    assert row["first_error"] is None
    assert row["seq_errors"] == 0
    assert row["disconnects"] == 0
    latency = row["latency_ms"]
    assert latency["p50"] <= latency["p99"] <= latency["max"]
    # The node counted its group commits: at least one, at most one per event.
    assert isinstance(row["store_commits"], int)
    assert 1 <= row["store_commits"] <= MESSAGES
    assert isinstance(row["server_cpu_s"], float | int)


def _assert_resume_exact(resume: dict[str, Any]) -> None:
    assert set(resume) == RESUME_KEYS
    assert resume["events"] == RESUME_EVENTS
    assert resume["received"] == RESUME_EVENTS
    assert resume["out_of_order"] == 0
    assert resume["extra"] == 0
    assert resume["exact"] is True
    assert resume["recovered"] is True
    assert resume["error"] is None
    assert isinstance(resume["resume_s"], float | int)
    assert resume["reply_ms"] <= resume["first_event_ms"]


def test_memory_and_sqlite_ack_every_publish_and_resume_exactly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, result = _run(capsys, tmp_path / "out.jsonl")
    assert status == 0
    assert set(result) == RESULT_KEYS
    assert result["bench"] == "durable"
    assert result["stores"] == ["memory", "sqlite"]
    assert result["publishers"] == [PUBLISHERS]
    assert [row["store"] for row in result["rows"]] == ["memory", "sqlite"]
    for row in result["rows"]:
        _assert_row_complete(row)
    assert [resume["store"] for resume in result["resume"]] == ["memory", "sqlite"]
    for resume in result["resume"]:
        _assert_resume_exact(resume)
    assert complete(result)


def test_postgres_row_and_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, result = _run(capsys, tmp_path / "out.jsonl", stores="postgres")
    assert status == 0
    (row,) = result["rows"]
    assert row["store"] == "postgres"
    _assert_row_complete(row)
    (resume,) = result["resume"]
    _assert_resume_exact(resume)


def test_one_row_per_store_and_publisher_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, result = _run(
        capsys, tmp_path / "out.jsonl", stores="memory", publishers="1,3", resume_events=0
    )
    assert status == 0
    assert [(row["store"], row["publishers"]) for row in result["rows"]] == [
        ("memory", 1),
        ("memory", 3),
    ]
    assert all(row["acked"] == MESSAGES for row in result["rows"])
    assert result["resume"] == []


def test_cli_prints_json_and_appends_output(tmp_path: Path) -> None:
    output = tmp_path / "results.jsonl"
    output.write_text('{"earlier": true}\n')
    args = ["bench", "durable", "--store", "memory", "--publishers", "2", "--messages", "20"]
    args += ["--resume-events", "30", "--json", "--output", str(output)]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout.strip())
    assert result["rows"][0]["acked"] == 20
    assert result["resume"][0]["received"] == 30
    lines = output.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1]) == result


@pytest.mark.parametrize(
    "overrides",
    [
        {"stores": "oracle"},
        {"stores": ""},
        {"publishers": "0"},
        {"publishers": "two"},
        {"messages": 0},
        {"size": -1},
        {"window": 0},
        {"resume_events": -1},
        {"timeout": 0.0},
    ],
)
def test_bad_arguments_exit_2_without_running(
    overrides: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_durable_cli(**_args(tmp_path / "never.jsonl", **overrides)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "agentcast bench durable:" in captured.err
    assert not (tmp_path / "never.jsonl").exists()


def test_incomplete_results_are_not_complete() -> None:
    row = {"acked": 9, "messages": 10, "publish_errors": 0, "seq_errors": 0}
    assert not complete({"rows": [row], "resume": []})
    assert complete({"rows": [{**row, "acked": 10}], "resume": []})
    assert not complete({"rows": [], "resume": [{"exact": False}]})


@pytest.mark.parametrize("size", [8, 64, 1000])
def test_publish_frame_pads_the_payload_to_size(size: int) -> None:
    frame = orjson.loads(publish_frame(publish_prefix("bench.durable.p1", size), 17))
    assert frame == {
        "cmd": "publish",
        "topic": "bench.durable.p1",
        "payload": frame["payload"],
        "id": 17,
    }
    assert len(orjson.dumps(frame["payload"])) == size


def test_resume_frame_asks_for_everything_after_the_position() -> None:
    frame = orjson.loads(resume_frame("bench.durable.resume", "e1", 0))
    assert frame["cmd"] == "subscribe"
    assert frame["topic"] == "bench.durable.resume"
    assert frame["since"] == {"epoch": "e1", "seq": 0}


def test_shares_split_evenly() -> None:
    assert shares(10, 3) == [4, 3, 3]
    assert shares(2, 4) == [1, 1, 0, 0]
    assert sum(shares(50_000, 100)) == 50_000


def test_stats_line_parses() -> None:
    assert parse_stats('STATS {"batches": 3, "appended": 50, "failures": 0}') == {
        "batches": 3,
        "appended": 50,
        "failures": 0,
    }
    with pytest.raises(ValueError):
        parse_stats("READY 4242")
