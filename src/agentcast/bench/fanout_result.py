"""The fan-out benchmark's result object and its human-readable summary (pure functions)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True, frozen=True)
class FanoutParams:
    """What was asked for; ``messages`` and ``rate`` are 0 in idle mode."""

    server: str
    subscribers: int
    messages: int
    size: int
    rate: float
    idle: bool


def mode_of(params: FanoutParams) -> str:
    if params.idle:
        return "idle"
    return "paced" if params.rate > 0 else "burst"


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def build_result(
    params: FanoutParams,
    measured: dict[str, Any],
    pinned: tuple[int | None, int | None],
) -> dict[str, Any]:
    """Combine the load's raw measurements with the parameters and the environment.

    ``lost`` is ``subscribers * messages - delivered``; per-delivery and per-connection
    figures are ``None`` when their denominator is 0.
    """
    expected = params.subscribers * params.messages
    delivered = int(measured.get("delivered", 0))
    duration = measured.get("duration_s")
    server_cpu = measured.get("server_cpu_s")
    rss_before = int(measured["server_rss_before"])
    rss_after = int(measured["server_rss_after"])
    rss_per_conn = _ratio((rss_after - rss_before) / 1024, params.subscribers, 2)
    cpu_us = _ratio(server_cpu * 1e6 if server_cpu is not None else None, delivered, 3)
    latency = measured.get("latency_ms") or {"p50": None, "p99": None, "max": None}
    return {
        "bench": "fanout",
        "mode": mode_of(params),
        "server": params.server,
        "subscribers": params.subscribers,
        "messages": params.messages,
        "size": params.size,
        "rate": params.rate,
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "out_of_order": int(measured.get("out_of_order", 0)),
        "duration_s": duration,
        "delivered_per_s": _ratio(float(delivered), duration, 1),
        "latency_ms": latency,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_delivery": cpu_us,
        "load_cpu_s": measured.get("load_cpu_s"),
        "rss_per_connection_kb": rss_per_conn,
        "server_rss_before_kb": rss_before // 1024,
        "server_rss_after_kb": rss_after // 1024,
        "connect_s": measured.get("connect_s"),
        "published": measured.get("published", 0),
        "acked": measured.get("acked", 0),
        "publish_errors": measured.get("publish_errors", 0),
        "first_error": measured.get("first_error"),
        "disconnects": measured.get("disconnects", 0),
        "pinned": {"server": pinned[0], "load": pinned[1]},
        "loadavg_1m_before": measured.get("loadavg_1m_before"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def summary(result: dict[str, Any]) -> str:
    """A few readable lines about ``result`` (for stderr)."""
    head = f"fanout {result['mode']}: server={result['server']} {result['subscribers']} subscribers"
    rss = (
        f"  server RSS {result['server_rss_before_kb']} KB -> {result['server_rss_after_kb']} KB"
        f" = {_fmt(result['rss_per_connection_kb'], ' KB')} per connection"
        f" (connected in {result['connect_s']} s)"
    )
    if result["mode"] == "idle":
        return f"{head}\n{rss}"
    latency = result["latency_ms"]
    rate = f" at {result['rate']:g}/s" if result["mode"] == "paced" else ""
    lines = [
        f"{head} x {result['messages']} messages x {result['size']} B{rate}",
        f"  delivered {result['delivered']}/{result['expected']} (lost {result['lost']}, "
        f"out of order {result['out_of_order']}) in {_fmt(result['duration_s'], ' s')} "
        f"= {_fmt(result['delivered_per_s'])}/s",
        f"  latency p50 {_fmt(latency['p50'], ' ms')}  p99 {_fmt(latency['p99'], ' ms')}  "
        f"max {_fmt(latency['max'], ' ms')}",
        f"  server CPU {_fmt(result['server_cpu_s'], ' s')} = "
        f"{_fmt(result['server_cpu_us_per_delivery'], ' us')} per delivery "
        f"(load CPU {_fmt(result['load_cpu_s'], ' s')})",
        rss,
    ]
    if result["publish_errors"]:
        lines.append(
            f"  publish errors: {result['publish_errors']} (first: {result['first_error']})"
        )
    return "\n".join(lines)
