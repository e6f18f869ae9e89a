"""The table of every workflow benchmark run, for docs/benchmarks.md (pure but for main).

``python -m agentcast.bench.workflow_table RESULTS.jsonl`` prints one Markdown row per run
and database of the ``workflow`` results in a JSON-lines file; with ``--update DOC.md`` it
replaces the lines between :data:`START` and :data:`END` in that file with the table
instead. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agentcast.bench.workflow_result import MISSING

START = "<!-- workflow-table:start -->"
END = "<!-- workflow-table:end -->"

COLUMNS = (
    ("timestamp (UTC)", "---"),
    ("code", "---"),
    ("load avg before / after", "---:"),
    ("db", "---"),
    ("events / instances", "---:"),
    ("transitions/s", "---:"),
    ("orchestrator µs/transition", "---:"),
    ("events/batch", "---:"),
    ("rate /s", "---:"),
    ("at rate: orchestrator µs/transition", "---:"),
    ("p50 ms", "---:"),
    ("p99 ms", "---:"),
    ("p99.9 ms", "---:"),
    ("max ms", "---:"),
    ("exact", "---"),
)


def load_results(path: Path) -> list[dict[str, Any]]:
    """The ``workflow`` results in the JSON-lines file ``path``, in file order."""
    results: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            if isinstance(item, dict) and item.get("bench") == "workflow":
                results.append(item)
    return results


def _fmt(value: object) -> str:
    return MISSING if value is None else str(value)


def code_cell(source: dict[str, Any] | None) -> str:
    """The commit measured, plus the files of the measured code changed on top of it."""
    if not source:
        return MISSING
    changed = [Path(name).name for name in source.get("modified") or []]
    return str(source.get("commit")) + (f" + {', '.join(changed)}" if changed else "")


def run_rows(result: dict[str, Any]) -> list[list[str]]:
    """The cells of each database row of one run."""
    params = result["params"]
    load = f"{result.get('loadavg_1m_before')} / {result.get('loadavg_1m_after')}"
    rows: list[list[str]] = []
    for row in result["rows"]:
        throughput = row["throughput"]
        latency = row["latency"] or {}
        figures = latency.get("latency_ms") or {}
        batches = throughput.get("orchestrator") or {}
        exact = row["applied_all"] and throughput["exact"] and latency.get("exact", True)
        rows.append(
            [
                str(result["timestamp"]),
                code_cell(result.get("source")),
                load,
                str(row["db"]),
                f"{params['events']} / {params['instances']}",
                _fmt(throughput.get("transitions_per_s")),
                _fmt(throughput.get("orchestrator_cpu_us_per_transition")),
                _fmt(batches.get("events_per_batch")),
                _fmt(params["rate"] if row["latency"] is not None else None),
                _fmt(latency.get("orchestrator_cpu_us_per_transition")),
                _fmt(figures.get("p50")),
                _fmt(figures.get("p99")),
                _fmt(figures.get("p999")),
                _fmt(figures.get("max")),
                "yes" if exact else "NO",
            ]
        )
    return rows


def runs_table(results: list[dict[str, Any]]) -> str:
    """Every run's rows as one Markdown table."""
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "| " + " | ".join(align for _, align in COLUMNS) + " |",
    ]
    for result in results:
        lines += ["| " + " | ".join(cells) + " |" for cells in run_rows(result)]
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """``text`` with the lines between :data:`START` and :data:`END` replaced by ``table``;
    ``ValueError`` when the markers are missing or out of order."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"expected {START} ... {END}")
    return text[: start + len(START)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.workflow_table")
    parser.add_argument("results", type=Path)
    parser.add_argument("--update", type=Path, default=None, help="Markdown file to update.")
    args = parser.parse_args(argv)
    table = runs_table(load_results(args.results))
    if args.update is None:
        print(table)
        return 0
    try:
        updated = replace_block(args.update.read_text(encoding="utf-8"), table)
    except ValueError as exc:
        print(f"{args.update}: {exc}", file=sys.stderr)
        return 2
    args.update.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
