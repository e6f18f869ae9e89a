"""The durable benchmark's result object and its human-readable summary (pure functions)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TOPICS = "one per publisher"


@dataclass(slots=True, frozen=True)
class DurableParams:
    """What was asked for; ``messages`` is the total of one row, over all its publishers."""

    stores: tuple[str, ...]
    publishers: tuple[int, ...]
    messages: int
    size: int
    window: int
    resume_events: int
    timeout: float


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def publish_row(
    store: str,
    publishers: int,
    messages: int,
    measured: dict[str, Any],
    stats: dict[str, int] | None,
) -> dict[str, Any]:
    """One ``(store, publishers)`` row from the load's raw measurements and the node's
    group-commit counters (``None`` when they could not be read)."""
    acked = int(measured.get("acked", 0))
    duration = measured.get("duration_s")
    server_cpu = measured.get("server_cpu_s")
    commits = None if stats is None else stats.get("batches")
    return {
        "store": store,
        "publishers": publishers,
        "messages": messages,
        "sent": measured.get("sent", 0),
        "acked": acked,
        "publish_errors": measured.get("publish_errors", 0),
        "first_error": measured.get("first_error"),
        "seq_errors": measured.get("seq_errors", 0),
        "disconnects": measured.get("disconnects", 0),
        "duration_s": duration,
        "acked_per_s": _ratio(float(acked), duration, 1),
        "latency_ms": measured.get("latency_ms") or {"p50": None, "p99": None, "max": None},
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_publish": _ratio(
            None if server_cpu is None else server_cpu * 1e6, acked, 2
        ),
        "load_cpu_s": measured.get("load_cpu_s"),
        "store_commits": commits,
        "events_per_commit": _ratio(float(acked), commits, 1),
        "connect_s": measured.get("connect_s"),
    }


def resume_row(store: str, measured: dict[str, Any]) -> dict[str, Any]:
    """One store's resume figures; ``exact`` is true when the subscriber got ``seq`` 1..R in
    order and nothing else."""
    events = int(measured.get("events", 0))
    received = int(measured.get("received", 0))
    out_of_order = int(measured.get("out_of_order", 0))
    extra = int(measured.get("extra", 0))
    resume_s = measured.get("resume_s")
    server_cpu = measured.get("server_cpu_s")
    published = measured.get("published") or {}
    return {
        "store": store,
        "events": events,
        "received": received,
        "out_of_order": out_of_order,
        "extra": extra,
        "exact": received == events and out_of_order == 0 and extra == 0,
        "recovered": measured.get("recovered"),
        "error": measured.get("error"),
        "resume_s": resume_s,
        "reply_ms": measured.get("reply_ms"),
        "first_event_ms": measured.get("first_event_ms"),
        "events_per_s": _ratio(float(received), resume_s, 1),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_event": _ratio(
            None if server_cpu is None else server_cpu * 1e6, received, 2
        ),
        "publish_s": published.get("duration_s"),
    }


def build_result(
    params: DurableParams,
    rows: list[dict[str, Any]],
    resumes: list[dict[str, Any]],
    pinned: tuple[int | None, int | None],
    loadavg_before: float,
) -> dict[str, Any]:
    """The whole run: parameters, the rows, the resume figures and the environment."""
    return {
        "bench": "durable",
        "stores": list(params.stores),
        "publishers": list(params.publishers),
        "messages": params.messages,
        "size": params.size,
        "window": params.window,
        "topics": TOPICS,
        "resume_events": params.resume_events,
        "rows": rows,
        "resume": resumes,
        "pinned": {"server": pinned[0], "load": pinned[1]},
        "loadavg_1m_before": loadavg_before,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def complete(result: dict[str, Any]) -> bool:
    """Every publish acked (no refusal, ``seq`` gapless per topic) and every resume exact."""
    rows_ok = all(
        row["acked"] == row["messages"] and not row["publish_errors"] and not row["seq_errors"]
        for row in result["rows"]
    )
    return rows_ok and all(resume["exact"] for resume in result["resume"])


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def summary(result: dict[str, Any]) -> str:
    """A few readable lines about ``result`` (for stderr)."""
    lines = [
        f"durable: {result['messages']} acked publishes of {result['size']} B per row, "
        f"{result['window']} in flight per publisher, {result['topics']}",
        f"  {'store':<9}{'pubs':>6}{'acked/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'us/pub':>8}{'commits':>9}{'ev/commit':>10}  acked",
    ]
    for row in result["rows"]:
        latency = row["latency_ms"]
        lines.append(
            f"  {row['store']:<9}{row['publishers']:>6}{_fmt(row['acked_per_s']):>11}"
            f"{_fmt(latency['p50']):>9}{_fmt(latency['p99']):>9}"
            f"{_fmt(row['server_cpu_us_per_publish']):>8}{_fmt(row['store_commits']):>9}"
            f"{_fmt(row['events_per_commit']):>10}  {row['acked']}/{row['messages']}"
            + (
                f" (errors {row['publish_errors']}: {row['first_error']})"
                if row["publish_errors"]
                else ""
            )
        )
    for resume in result["resume"]:
        verdict = (
            "exactly 1..R in order"
            if resume["exact"]
            else (
                f"NOT exact: received {resume['received']}, out of order {resume['out_of_order']}, "
                f"extra {resume['extra']}, error {resume['error']}"
            )
        )
        lines.append(
            f"  resume {resume['store']}: {resume['events']} events in "
            f"{_fmt(resume['resume_s'], ' s')} (reply {_fmt(resume['reply_ms'], ' ms')}, "
            f"first event {_fmt(resume['first_event_ms'], ' ms')}, server "
            f"{_fmt(resume['server_cpu_us_per_event'], ' us')}/event), {verdict}"
        )
    return "\n".join(lines)
