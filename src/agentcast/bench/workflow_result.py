"""The workflow benchmark's result object and its summary (pure functions).

The table of every run in docs/benchmarks.md is :mod:`agentcast.bench.workflow_table`'s.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

MISSING = "n/a"


@dataclass(slots=True, frozen=True)
class WorkflowParams:
    """What was asked for."""

    dbs: tuple[str, ...]
    events: int
    instances: int
    window: int
    rate: float
    seconds: float
    batch: int
    node_history: str
    timeout: float


@dataclass(slots=True, frozen=True)
class Placement:
    """The CPU of each process (``None``: not pinned)."""

    node: int | None
    orchestrator: int | None
    load: int | None


def nearest_rank(ordered: Sequence[int], permille: int) -> int:
    """The nearest-rank percentile ``permille / 10`` of non-empty ascending values, in
    integer arithmetic (so p99.9 of 1000 values is the 999th, not the 1000th)."""
    if not ordered or not 0 < permille <= 1000:
        raise ValueError("nearest_rank needs values and 0 < permille <= 1000")
    rank = -(-permille * len(ordered) // 1000)
    return ordered[rank - 1]


def latency_ms(latencies_ns: Sequence[int]) -> dict[str, float | None]:
    """``{count, p50, p99, p999, max}`` (milliseconds, 3 decimals; nearest rank) of
    nanosecond latencies; ``None`` figures when there are none."""
    if not latencies_ns:
        return {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(latencies_ns)

    def ms(value: int) -> float:
        return round(value / 1e6, 3)

    return {
        "count": len(ordered),
        "p50": ms(nearest_rank(ordered, 500)),
        "p99": ms(nearest_rank(ordered, 990)),
        "p999": ms(nearest_rank(ordered, 999)),
        "max": ms(ordered[-1]),
    }


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def _per_transition_us(cpu_s: float | None, transitions: int) -> float | None:
    return _ratio(None if cpu_s is None else cpu_s * 1e6, transitions, 1)


def phase_row(measured: dict[str, Any], *, rate_from: str | None) -> dict[str, Any]:
    """A phase's figures from the load's raw ones, plus the derived ratios:
    ``transitions_per_s`` (over ``rate_from``, a duration key, when given) and CPU
    microseconds per transition of the orchestrator and the node."""
    row = dict(measured)
    transitions = int(row.get("transitions", 0))
    if rate_from is not None:
        row["transitions_per_s"] = _ratio(float(transitions), row.get(rate_from), 1)
    row["orchestrator_cpu_us_per_transition"] = _per_transition_us(
        row.get("orchestrator_cpu_s"), transitions
    )
    row["node_cpu_us_per_transition"] = _per_transition_us(row.get("node_cpu_s"), transitions)
    return row


def batch_figures(counts: dict[str, int] | None) -> dict[str, Any]:
    """``applied``, ``batches`` and ``events_per_batch`` of orchestrator counters (all
    ``None`` when there are none)."""
    if counts is None:
        return {"applied": None, "batches": None, "events_per_batch": None}
    applied, batches = counts.get("applied"), counts.get("batches")
    return {
        "applied": applied,
        "batches": batches,
        "events_per_batch": _ratio(None if applied is None else float(applied), batches, 1),
    }


def counts_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What the counters ``after`` add to ``before``."""
    return {key: value - before.get(key, 0) for key, value in after.items()}


def db_row(
    db: str,
    measured: dict[str, Any],
    stats: Sequence[dict[str, int]],
    expected_applied: int,
) -> dict[str, Any]:
    """One database's row: both phases, the orchestrator's final counters (``None`` when
    they could not be read) with ``events_per_batch``, and whether it applied exactly
    ``expected_applied`` transitions without a failure.

    ``stats`` are the orchestrator's counter snapshots: ``[final]``, or ``[after the
    throughput phase, final]``; with both, each phase also gets its own ``applied``,
    ``batches`` and ``events_per_batch``.
    """
    latency = measured.get("latency")
    final = dict(stats[-1]) if stats else None
    split = len(stats) == 2
    throughput_row = phase_row(measured["throughput"], rate_from="duration_s")
    latency_row = None if latency is None else phase_row(latency, rate_from=None)
    throughput_row["orchestrator"] = batch_figures(stats[0] if split else None)
    if latency_row is not None:
        between = counts_between(stats[0], stats[1]) if split else None
        latency_row["orchestrator"] = batch_figures(between)
    orchestrator: dict[str, Any] | None = None
    if final is not None:
        orchestrator = {**final, **batch_figures(final)}
    return {
        "db": db,
        "throughput": throughput_row,
        "latency": latency_row,
        "orchestrator": orchestrator,
        "applied_all": final is not None
        and final.get("applied") == expected_applied
        and not final.get("failures"),
        "malformed_intents": measured.get("malformed", 0),
        "reconnects": measured.get("reconnects", 0),
        "dropped": measured.get("dropped", 0),
    }


def cpu_note(placement: Placement, cpus: int | None, loadavg: tuple[float, float]) -> str:
    """How the three processes were placed, and how busy the machine was."""
    if placement.orchestrator is None:
        where = "no pinning (fewer than 2 CPUs)"
    else:
        where = (
            f"node and load on CPU {placement.node}, orchestrator alone on CPU "
            f"{placement.orchestrator}"
        )
    before, after = loadavg
    busy = max(before, after) > 1.0
    tail = " (the machine was busy with other work)" if busy else ""
    return f"{cpus} CPUs; {where}; 1-min load average {before} before, {after} after{tail}"


def build_result(
    params: WorkflowParams,
    rows: list[dict[str, Any]],
    placement: Placement,
    loadavg: tuple[float, float],
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run: parameters, one row per database, and the environment (``source``:
    the commit measured and its uncommitted changes, when known)."""
    cpus = os.cpu_count()
    return {
        "bench": "workflow",
        "params": {**asdict(params), "dbs": list(params.dbs)},
        "rows": rows,
        "pinned": asdict(placement),
        "cpu_note": cpu_note(placement, cpus, loadavg),
        "loadavg_1m_before": loadavg[0],
        "loadavg_1m_after": loadavg[1],
        "source": source,
        "python": platform.python_version(),
        "cpus": cpus,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def complete(result: dict[str, Any]) -> bool:
    """Every event acked and turned into exactly one transition whose intent arrived."""

    def phase_ok(phase: dict[str, Any] | None) -> bool:
        return phase is None or (
            phase["acked"] == phase["sent"] and not phase["publish_errors"] and phase["exact"]
        )

    return all(
        row["applied_all"] and phase_ok(row["throughput"]) and phase_ok(row["latency"])
        for row in result["rows"]
    )


def _fmt(value: object) -> str:
    return MISSING if value is None else str(value)


TABLE_COLUMNS = (
    "db",
    "transitions/s",
    "orchestrator µs/transition",
    "events/batch",
    "at rate: orchestrator µs/transition",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "exact",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one row of :func:`markdown_table`."""
    throughput = row["throughput"]
    latency = row["latency"] or {}
    lat = latency.get("latency_ms") or {}
    batches = throughput.get("orchestrator") or {}
    exact = row["applied_all"] and throughput["exact"] and latency.get("exact", True)
    return [
        str(row["db"]),
        _fmt(throughput.get("transitions_per_s")),
        _fmt(throughput.get("orchestrator_cpu_us_per_transition")),
        _fmt(batches.get("events_per_batch")),
        _fmt(latency.get("orchestrator_cpu_us_per_transition")),
        _fmt(lat.get("p50")),
        _fmt(lat.get("p99")),
        _fmt(lat.get("p999")),
        _fmt(lat.get("max")),
        "yes" if exact else "NO",
    ]


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of ``result`` as a Markdown table (throughput, then latency figures)."""
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in TABLE_COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in result["rows"]]
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    """A few readable lines about ``result`` (for stderr)."""
    p = result["params"]
    head = (
        f"workflow: {p['events']} events over {p['instances']} instances "
        f"(window {p['window']}, batch {p['batch']}), then {p['rate']:g}/s for "
        f"{p['seconds']:g} s; node history {p['node_history']}"
    )
    return "\n".join([head, markdown_table(result), result["cpu_note"]])
