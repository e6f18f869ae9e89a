"""A Markdown table of ``agentcast bench sessions`` results:
``python -m agentcast.bench.sessions_table RESULTS.jsonl``.

Reads the JSON lines the command appended (lines of other benchmarks are skipped) and prints
one table row per run, in file order (:func:`markdown_table`), then the fit of the node's
CPU per delivery against its writes per delivery (:func:`cost_fit`); both are pure
functions, so the figures in docs/benchmarks.md are generated, never typed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MISSING = "n/a"


def _get(*path: str) -> Callable[[dict[str, Any]], object]:
    def read(row: dict[str, Any]) -> object:
        value: object = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return read


def _pinned(row: dict[str, Any]) -> object:
    pinned = row.get("pinned") or {}
    return "yes" if pinned.get("server") is not None else "no"


def _layout(row: dict[str, Any]) -> object:
    layout = f"{row.get('sessions')} x ({row.get('agents')} + {row.get('observers')})"
    tenant_wide = row.get("global_observers") or 0
    return f"{layout} + {tenant_wide}" if tenant_wide else layout


def _waits(row: dict[str, Any]) -> object:
    server, load = row.get("server_runqueue_wait_s"), row.get("load_runqueue_wait_s")
    return f"{_cell(server)} / {_cell(load)}"


def _le(*path: str) -> Callable[[dict[str, Any]], object]:
    def read(row: dict[str, Any]) -> object:
        value = _get(*path)(row)
        return MISSING if value is None else f"≤ {value:g}"

    return read


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], object]], ...] = (
    ("timestamp (UTC)", _get("timestamp")),
    ("connections", _get("connections")),
    ("sessions x (agents + observers) [+ tenant-wide]", _layout),
    ("pinned", _pinned),
    ("load avg before", _get("loadavg_1m_before")),
    ("target deliveries/s", _get("target_deliveries_per_s")),
    ("deliveries/s", _get("deliveries_per_s")),
    ("missing", _get("missing")),
    ("e2e p50 ms", _get("e2e_latency_ms", "p50")),
    ("e2e p99 ms", _get("e2e_latency_ms", "p99")),
    ("e2e p999 ms", _get("e2e_latency_ms", "p999")),
    ("ack p50 ms", _get("ack_latency_ms", "p50")),
    ("ack p99 ms", _get("ack_latency_ms", "p99")),
    ("send lag p99 ms", _get("send_lag_ms", "p99")),
    ("node write p99 ms", _le("server_write_latency_ms", "p99")),
    ("server CPU share", _get("server_cpu_share")),
    ("server µs/delivery", _get("server_cpu_us_per_delivery")),
    ("writes/delivery", _get("writes_per_delivery")),
    ("load CPU share", _get("load_cpu_share")),
    ("server / load CPU wait s", _waits),
    ("queue at write max", _le("queue_at_write", "max")),
    ("drops", _get("drops")),
    ("slow disconnects", _get("slow_disconnects")),
)  # fmt: skip


def load_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The ``sessions`` results among JSON ``lines`` (blank lines and other benches skipped)."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row, dict) and row.get("bench") == "sessions":
            rows.append(row)
    return rows


def quiet_rows(rows: Iterable[dict[str, Any]], max_wait: float) -> list[dict[str, Any]]:
    """The rows where neither the server nor the loads waited more than ``max_wait`` seconds
    for a CPU during the window (rows without those figures are left out)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        waits = (row.get("server_runqueue_wait_s"), row.get("load_runqueue_wait_s"))
        if all(wait is not None and float(wait) <= max_wait for wait in waits):
            out.append(row)
    return out


def _cell(value: object) -> str:
    return MISSING if value is None else str(value)


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    """One header, one alignment line and one line per row (text columns left-aligned)."""
    names = [name for name, _ in COLUMNS]
    align = ["---" if i < 4 else "---:" for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(names) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(read(row)) for _, read in COLUMNS) + " |")
    return "\n".join(lines)


def cost_fit(rows: Iterable[dict[str, Any]]) -> tuple[float, float, int] | None:
    """Least squares ``server µs per delivery = fixed + per_write * writes per delivery``
    over the rows that have both figures: ``(fixed, per_write, rows used)``, or ``None``
    with fewer than two rows or no spread in writes per delivery.

    The node frames an event once, so a delivery costs a little on its own (``fixed``: the
    queue push and the share of the publication) and a whole socket write when it is not
    coalesced with others for the same connection (``per_write``)."""
    points = [
        (float(row["writes_per_delivery"]), float(row["server_cpu_us_per_delivery"]))
        for row in rows
        if row.get("writes_per_delivery") is not None
        and row.get("server_cpu_us_per_delivery") is not None
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return mean_y - slope * mean_x, slope, len(points)


def main(argv: list[str] | None = None) -> int:
    """``RESULTS.jsonl [MAX_WAIT]``: every row, or only those of :func:`quiet_rows`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print(
            "usage: python -m agentcast.bench.sessions_table RESULTS.jsonl [MAX_CPU_WAIT_S]",
            file=sys.stderr,
        )
        return 2
    rows = load_rows(Path(args[0]).read_text(encoding="utf-8").splitlines())
    if len(args) == 2:
        rows = quiet_rows(rows, float(args[1]))
    print(markdown_table(rows))
    fit = cost_fit(rows)
    if fit is not None:
        fixed, per_write, used = fit
        print(
            f"\nServer CPU per delivery ≈ {fixed:.2f} µs + {per_write:.2f} µs * writes per "
            f"delivery (least squares over {used} runs)."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
