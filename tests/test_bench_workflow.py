"""``agentcast bench workflow``: tiny end-to-end runs on each database (no timing
assertions) and the pure parts (tally, aggregation, table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentcast.bench.workflow_flows import INTENTS, count
from agentcast.bench.workflow_load import WorkflowPlan, parse_plan
from agentcast.bench.workflow_result import (
    Placement,
    WorkflowParams,
    build_result,
    complete,
    cpu_note,
    db_row,
    latency_ms,
    markdown_table,
    nearest_rank,
    phase_row,
)
from agentcast.bench.workflow_run import run_workflow_cli
from agentcast.bench.workflow_table import END, START, load_results, replace_block, runs_table
from agentcast.bench.workflow_table import main as table_main
from agentcast.bench.workflow_tally import IntentTally
from agentcast.cli import main
from agentcast.protocol.envelope import Envelope
from tests.pg import PG_DSN

RESULT_KEYS = {
    "bench", "params", "rows", "pinned", "cpu_note", "loadavg_1m_before", "source",
    "loadavg_1m_after", "python", "cpus", "timestamp",
}  # fmt: skip
PARAM_KEYS = {
    "dbs", "events", "instances", "window", "rate", "seconds", "batch", "node_history",
    "timeout",
}  # fmt: skip
ROW_KEYS = {
    "db", "throughput", "latency", "orchestrator", "applied_all", "malformed_intents",
    "reconnects", "dropped",
}  # fmt: skip
PHASE_KEYS = {
    "sent", "acked", "publish_errors", "first_error", "transitions", "intents_received",
    "intent_duplicates", "out_of_order", "exact", "orchestrator_cpu_s", "node_cpu_s",
    "load_cpu_s", "orchestrator_cpu_us_per_transition", "node_cpu_us_per_transition",
}  # fmt: skip
THROUGHPUT_KEYS = PHASE_KEYS | {"publish_s", "duration_s", "transitions_per_s", "orchestrator"}
LATENCY_KEYS = PHASE_KEYS | {"max_send_lag_ms", "latency_ms", "ack_latency_ms", "orchestrator"}
LATENCY_FIGURES = {"count", "p50", "p99", "p999", "max"}

EVENTS, INSTANCES, RATE, SECONDS = 300, 7, 100.0, 1.0


# -- end to end --------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("db", "node_history"), [("sqlite", "sqlite"), ("postgres", "memory")])
def test_every_event_becomes_one_transition(db: str, node_history: str, tmp_path: Path) -> None:
    output = tmp_path / "workflow.jsonl"
    output.write_text('{"earlier": true}\n')
    args = ["bench", "workflow", "--db", db, "--events", str(EVENTS), "--instances"]
    args += [str(INSTANCES), "--rate", str(RATE), "--seconds", str(SECONDS), "--batch", "32"]
    args += ["--timeout", "60", "--postgres-dsn", PG_DSN, "--node-history", node_history]
    args += ["--json", "--output", str(output)]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout.strip())
    assert json.loads(output.read_text().splitlines()[1]) == result
    assert set(result) == RESULT_KEYS and set(result["params"]) == PARAM_KEYS
    assert result["bench"] == "workflow" and result["params"]["dbs"] == [db]
    assert result["params"]["node_history"] == node_history
    (row,) = result["rows"]
    assert set(row) == ROW_KEYS and row["db"] == db
    throughput, latency = row["throughput"], row["latency"]
    assert set(throughput) == THROUGHPUT_KEYS and set(latency) == LATENCY_KEYS
    assert throughput["acked"] == throughput["transitions"] == EVENTS
    assert throughput["exact"] and throughput["intent_duplicates"] == 0
    assert throughput["transitions_per_s"] > 0
    latency_events = round(RATE * SECONDS)
    assert latency["acked"] == latency["transitions"] == latency_events and latency["exact"]
    assert set(latency["latency_ms"]) == LATENCY_FIGURES
    assert latency["latency_ms"]["count"] == latency_events
    assert latency["latency_ms"]["p50"] <= latency["latency_ms"]["max"]
    stats = row["orchestrator"]
    assert stats["applied"] == EVENTS + latency_events and stats["failures"] == 0
    assert stats["sent"] == stats["applied"] and row["applied_all"]
    assert throughput["orchestrator"]["applied"] == EVENTS
    assert latency["orchestrator"]["applied"] == latency_events
    assert row["malformed_intents"] == 0 and row["dropped"] == 0
    assert complete(result)


def _cli_args(output: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dbs": "sqlite", "events": 10, "instances": 2, "window": 4, "rate": 10.0,
        "seconds": 0.0, "batch": 8, "node_history": "memory", "timeout": 10.0,
        "pg_dsn": PG_DSN, "as_json": True, "output": str(output),
    }  # fmt: skip
    return {**args, **overrides}


@pytest.mark.parametrize(
    "overrides",
    [
        {"dbs": "mysql"},
        {"dbs": ""},
        {"events": 0},
        {"instances": 0},
        {"window": 0},
        {"batch": 0},
        {"rate": 0.0},
        {"seconds": -1.0},
        {"rate": 100_000.0, "seconds": 100.0},
        {"timeout": 0.0},
    ],
)
def test_bad_arguments_exit_2_without_running(
    overrides: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_workflow_cli(**_cli_args(tmp_path / "never.jsonl", **overrides)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "agentcast bench workflow:" in captured.err
    assert not (tmp_path / "never.jsonl").exists()


# -- the workflow and the load's plan -------------------------------------------------------


def test_each_event_counts_and_publishes_one_intent() -> None:
    event = Envelope(
        id="e1", topic="bench.wf.events", seq=1, epoch="x", time="2026-01-01T00:00:00Z",
        source="s", payload={"t": 123}, correlation_id="l-3",
    )  # fmt: skip
    step = count({"n": 4}, event)
    assert step.state == {"n": 5}
    (intent,) = step.intents
    assert intent.topic == INTENTS and intent.payload == {"k": "l-3", "n": 5, "t": 123}


def test_plan_survives_the_command_line() -> None:
    plan = WorkflowPlan("ws://h:1/v1/ws", 11, 12, 300, 7, 16, 50.0, 2.0, 30.0, quiet=True)
    parsed, cpu = parse_plan([*plan.to_args(), "--cpu=1"])
    assert parsed == plan and cpu == 1 and plan.latency_events == 100


# -- the tally -----------------------------------------------------------------------------


def test_tally_counts_transitions_once_and_signals_each_phase_once() -> None:
    done: list[str] = []
    tally = IntentTally(done.append)
    tally.expect("x", 3)
    for n, arrival in ((1, 10), (2, 20), (2, 25), (3, 30)):
        tally.add({"k": "x-0", "n": n, "t": None}, arrival)
    tally.add({"k": "x-0", "n": 3}, 40)
    phase = tally.phase("x")
    assert done == ["x"]
    assert (phase.transitions, phase.received, phase.duplicates) == (3, 5, 2)
    assert phase.last_ns == 30 and phase.latencies_ns == []
    assert tally.complete_per_instance("x", {"x-0": 3})
    assert not tally.complete_per_instance("x", {"x-0": 4})
    assert not tally.complete_per_instance("x", {"x-0": 2})


def test_tally_measures_latency_and_order_per_instance() -> None:
    tally = IntentTally()
    tally.add({"k": "l-0", "n": 2, "t": 100}, 150)
    tally.add({"k": "l-0", "n": 1, "t": 90}, 160)
    tally.add({"k": "l-1", "n": 1, "t": 100}, 105)
    tally.add(None, 1)
    tally.add({"k": 5, "n": 1}, 1)
    tally.add({"k": "l-2", "n": True}, 1)
    phase = tally.phase("l")
    assert phase.latencies_ns == [50, 70, 5]
    assert phase.out_of_order == 2  # n=2 before n=1, then n=1 after n=2
    assert tally.malformed == 3
    assert tally.complete_per_instance("l", {"l-0": 2, "l-1": 1})


def test_expect_after_the_intents_still_signals() -> None:
    done: list[str] = []
    tally = IntentTally(done.append)
    tally.add({"k": "x-0", "n": 1}, 1)
    tally.expect("x", 1)
    assert done == ["x"]


# -- aggregation ---------------------------------------------------------------------------


def test_latency_percentiles_use_the_nearest_rank() -> None:
    figures = latency_ms([i * 1_000_000 for i in range(1, 1001)])
    assert figures == {"count": 1000, "p50": 500.0, "p99": 990.0, "p999": 999.0, "max": 1000.0}
    assert latency_ms([])["p50"] is None and latency_ms([])["count"] == 0
    assert latency_ms([3_000_000, 1_000_000])["p50"] == 1.0
    assert nearest_rank([5], 999) == 5
    with pytest.raises(ValueError):
        nearest_rank([], 500)


def test_phase_row_derives_rates_and_cpu_per_transition() -> None:
    row = phase_row(
        {"transitions": 500, "duration_s": 2.0, "orchestrator_cpu_s": 0.5, "node_cpu_s": None},
        rate_from="duration_s",
    )
    assert row["transitions_per_s"] == 250.0
    assert row["orchestrator_cpu_us_per_transition"] == 1000.0
    assert row["node_cpu_us_per_transition"] is None
    assert "transitions_per_s" not in phase_row({"transitions": 0}, rate_from=None)


def _phase(**overrides: Any) -> dict[str, Any]:
    base = {"sent": 10, "acked": 10, "publish_errors": 0, "transitions": 10, "exact": True}
    return {**base, "duration_s": 1.0, **overrides}


def _result(row: dict[str, Any]) -> dict[str, Any]:
    params = WorkflowParams(("sqlite",), 10, 2, 4, 10.0, 1.0, 8, "memory", 10.0)
    return build_result(params, [row], Placement(0, 1, 0), (0.5, 0.7))


def test_a_row_is_complete_only_when_every_event_applied_once() -> None:
    stats = [{"applied": 20, "batches": 4, "failures": 0}]
    good = db_row("sqlite", {"throughput": _phase(), "latency": _phase()}, stats, 20)
    assert good["applied_all"] and good["orchestrator"]["events_per_batch"] == 5.0
    assert good["throughput"]["orchestrator"]["events_per_batch"] is None
    assert complete(_result(good))
    assert not db_row("sqlite", {"throughput": _phase(), "latency": None}, [], 10)["applied_all"]
    short = db_row("sqlite", {"throughput": _phase(), "latency": None}, stats, 21)
    assert not complete(_result(short))
    failed = [{"applied": 20, "batches": 4, "failures": 1}]
    assert not db_row("sqlite", {"throughput": _phase(), "latency": None}, failed, 20)[
        "applied_all"
    ]
    for bad in (_phase(exact=False), _phase(acked=9), _phase(publish_errors=1)):
        row = db_row("sqlite", {"throughput": _phase(), "latency": bad}, stats, 20)
        assert not complete(_result(row))


def test_counters_split_between_the_phases() -> None:
    marks = [{"applied": 300, "batches": 3, "failures": 0}, {"applied": 400, "batches": 103}]
    row = db_row("postgres", {"throughput": _phase(), "latency": _phase()}, marks, 400)
    assert row["throughput"]["orchestrator"] == {
        "applied": 300, "batches": 3, "events_per_batch": 100.0,
    }  # fmt: skip
    assert row["latency"]["orchestrator"] == {
        "applied": 100, "batches": 100, "events_per_batch": 1.0,
    }  # fmt: skip
    assert row["orchestrator"]["events_per_batch"] == 3.9 and row["applied_all"]


def test_table_and_note_come_from_the_result() -> None:
    stats = [{"applied": 10, "batches": 2}, {"applied": 20, "batches": 12, "failures": 0}]
    measured = {"throughput": _phase(orchestrator_cpu_s=0.01), "latency": None}
    result = _result(db_row("postgres", measured, stats, 10 + 10))
    table = markdown_table(result).splitlines()
    assert len(table) == 3 and table[0].startswith("| db | transitions/s")
    assert table[2].startswith("| postgres | 10.0 | 1000.0 | 5.0 | n/a | n/a |")
    assert table[2].endswith("| yes |")
    assert "orchestrator alone on CPU 1" in result["cpu_note"]
    assert "busy" not in result["cpu_note"]
    assert "busy with other work" in cpu_note(Placement(0, 1, 0), 2, (0.2, 3.5))
    assert "no pinning" in cpu_note(Placement(None, None, None), 1, (0.0, 0.0))


def test_every_run_is_one_table_row_per_database(tmp_path: Path) -> None:
    stats = [{"applied": 10, "batches": 1, "failures": 0}]
    first = _result(db_row("sqlite", {"throughput": _phase(), "latency": None}, stats, 10))
    first["source"] = {"commit": "abc1234", "modified": ["src/agentcast/orchestration/db.py"]}
    second = {**first, "timestamp": "later", "source": None}
    path = tmp_path / "workflow.jsonl"
    lines = [json.dumps(first), '{"bench": "durable"}', "", json.dumps(second)]
    path.write_text("\n".join(lines) + "\n")
    results = load_results(path)
    assert [r["timestamp"] for r in results] == [first["timestamp"], "later"]
    table = runs_table(results).splitlines()
    assert len(table) == 4 and table[0].startswith("| timestamp (UTC) | code |")
    assert "| abc1234 + db.py | 0.5 / 0.7 | sqlite | 10 / 2 | 10.0 |" in table[2]
    assert table[3].startswith("| later | n/a |") and table[3].endswith("| yes |")


def test_the_table_replaces_its_block_in_a_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = [{"applied": 10, "batches": 1, "failures": 0}]
    result = _result(db_row("sqlite", {"throughput": _phase(), "latency": None}, stats, 10))
    results = tmp_path / "workflow.jsonl"
    results.write_text(json.dumps(result) + "\n")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# before\n{START}\nold table\n{END}\nafter\n")
    assert table_main([str(results), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text and text.startswith(f"# before\n{START}\n| timestamp")
    assert text.endswith(f"| yes |\n{END}\nafter\n")
    assert table_main([str(results)]) == 0
    assert capsys.readouterr().out.startswith("| timestamp (UTC) |")
    doc.write_text("no markers\n")
    assert table_main([str(results), "--update", str(doc)]) == 2
    with pytest.raises(ValueError):
        replace_block(f"{END}\n{START}\n", "table")
