"""``agentcast bench plot RESULTS.jsonl --out DIR``: figures and a table of a fan-out comparison.

Reads the rows that ``agentcast bench fanout --server a,b,... --output RESULTS.jsonl``
appended (rows of other benchmarks and single runs are skipped: a comparison row carries a
``run`` key; see :func:`load_rows` for which rows are kept). It writes, with
matplotlib's Agg backend:

* ``fanout-latency-cdf-<N>.png``: the delivery-latency CDF of every server at ``N``
  subscribers;
* ``fanout-throughput.png``: delivered messages per second against subscribers;
* ``fanout-cpu-per-delivery.png``: the servers' CPU microseconds per delivery against
  subscribers.

With ``--markdown`` it also prints the rows as a Markdown table (:func:`markdown_table`).
Loading and tabulating are pure functions; only :func:`write_plots` draws.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

MISSING = "n/a"


def load_rows(path: Path, run: str | None = None) -> list[dict[str, Any]]:
    """The comparison rows in the JSON-lines file ``path``: those of ``run`` only when given,
    else the latest row of every (subscribers, server) pair (so several comparison commands,
    say one per subscriber count, appended to one file make one picture). Sorted by
    subscribers, servers in the order they first appear; ``[]`` when there are none."""
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        comparison = isinstance(row, dict) and row.get("bench") == "fanout" and "run" in row
        if comparison and (run is None or row["run"] == run):
            rows.append(row)
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        latest[(int(row["subscribers"]), str(row["server"]))] = row
    rank = {server: index for index, server in enumerate(_servers(rows))}
    return sorted(latest.values(), key=lambda row: (row["subscribers"], rank[row["server"]]))


def _servers(rows: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(str(row["server"]), None)
    return list(seen)


def _measured(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if "error" not in row and row.get("delivered_per_s") is not None]


def _cell(value: object, suffix: str = "") -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") + suffix
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return f"{value}{suffix}"


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if row.get("publisher_disconnected"):
        notes.append("server closed the publisher's connection")
    if row.get("disconnects"):
        notes.append(f"{row['disconnects']:,} subscribers disconnected")
    if row.get("out_of_order"):
        notes.append(f"{row['out_of_order']:,} out of order")
    if row.get("acked") is not None and row.get("published") and row["acked"] < row["published"]:
        notes.append(f"{row['acked']}/{row['published']} publishes acked")
    return "; ".join(notes)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One table line per row: the measured figures and agentcast's advantage (``x``: how
    many times more msgs/s agentcast delivered, how many times less CPU per delivery it
    used)."""
    head = (
        "| subscribers | server | delivered | lost | msgs/s | agentcast x msgs/s "
        "| server CPU us/delivery | agentcast x CPU | p50 ms | p99 ms | RSS KB/conn | notes |"
    )
    lines = [head, "|" + " --- |" * 12]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['subscribers']:,} | {row['server']} | no result: {row['error']} "
                + "| " * 9
                + "|"
            )
            continue
        advantage = row.get("agentcast_advantage") or {}
        latency = row.get("latency_ms") or {}
        cells = [
            _cell(row["subscribers"]),
            str(row["server"]),
            f"{row['delivered']:,}/{row['expected']:,}",
            _cell(row["lost"]),
            _cell(round(row["delivered_per_s"]) if row["delivered_per_s"] else None),
            _cell(advantage.get("delivered_per_s"), "x"),
            _cell(row["server_cpu_us_per_delivery"]),
            _cell(advantage.get("cpu_per_delivery"), "x"),
            _cell(latency.get("p50")),
            _cell(latency.get("p99")),
            _cell(row.get("rss_per_connection_kb")),
            _notes(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plots(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Draw the module's PNG files from ``rows`` into ``out`` (created); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    measured = _measured(rows)
    servers = _servers(measured)
    written: list[Path] = []
    for count in sorted({int(row["subscribers"]) for row in measured}):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for row in measured:
            cdf = row.get("latency_cdf_ms") or []
            if int(row["subscribers"]) != count or not cdf:
                continue
            axes.plot([ms for _, ms in cdf], [q / 100 for q, _ in cdf], label=row["server"])
        axes.set_xscale("log")
        axes.set_xlabel("delivery latency (ms, log scale)")
        axes.set_ylabel("fraction of deliveries")
        axes.set_title(f"fanout: latency CDF, {count:,} subscribers")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        written.append(_save(figure, out / f"fanout-latency-cdf-{count}.png"))
        plt.close(figure)
    for key, name, label in (
        ("delivered_per_s", "fanout-throughput.png", "delivered messages per second"),
        ("server_cpu_us_per_delivery", "fanout-cpu-per-delivery.png", "server CPU us / delivery"),
    ):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for server in servers:
            points = sorted(
                (int(row["subscribers"]), float(row[key]))
                for row in measured
                if row["server"] == server and row.get(key) is not None
            )
            axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=server)
        counts = sorted({int(row["subscribers"]) for row in measured})
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(counts, [f"{count:,}" for count in counts])
        axes.minorticks_off()
        axes.set_xlabel("subscribers (log scale)")
        axes.set_ylabel(f"{label} (log scale)")
        axes.set_title(f"fanout: {label}")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        written.append(_save(figure, out / name))
        plt.close(figure)
    return written


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


@click.command("plot")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the PNG files.",
)
@click.option(
    "--run", default=None, help="Only this run (default: the latest row of each server and count)."
)
@click.option("--markdown", is_flag=True, help="Also print the rows as a Markdown table.")
def plot(results: Path, out: Path, run: str | None, markdown: bool) -> None:
    """Latency CDFs and throughput/CPU against subscribers of a `bench fanout` comparison."""
    rows = load_rows(results, run)
    if not rows:
        raise click.ClickException(f"{results} holds no fanout comparison rows")
    try:
        written = write_plots(rows, out)
    except ImportError:
        raise click.ClickException(
            "matplotlib is not installed: pip install 'agentcast[bench]'"
        ) from None
    for path in written:
        click.echo(f"wrote {path}", err=True)
    if markdown:
        click.echo(markdown_table(rows))
