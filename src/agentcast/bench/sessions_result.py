"""The sessions benchmark's result object and its summary (pure functions).

Inputs: the plan, the raw measurements of each load process (the JSON line of
:func:`agentcast.bench.sessions_load.run_load`), the merged latency samples, and the
parent's :class:`Window`: the node's counters (:func:`agentcast.bench.sessions_server.
hub_stats`) and the CPU seconds of the server and of the loads, read at the start and at
the end of the measured window, plus the node's counters once more after the drain.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentcast.bench.sessions_plan import SessionsPlan, deliveries_per_publish, publish_rate
from agentcast.hub.stats import LATENCY_BUCKETS, QUEUE_BUCKETS


@dataclass(slots=True, frozen=True)
class Window:
    """What the parent read around the measured window (seconds, counters). The waits are
    the time the server's and the loads' main threads were runnable but had no CPU (another
    process held it: with pinning, one that is not part of the run); ``None`` where the
    kernel does not tell."""

    seconds: float
    server_cpu_s: float
    load_cpu_s: float
    stats_start: dict[str, Any]
    stats_end: dict[str, Any]
    stats_final: dict[str, Any]
    server_wait_s: float | None = None
    load_wait_s: float | None = None


def nearest_rank(ordered: Sequence[int], per_mille: int) -> int:
    """The nearest-rank percentile ``per_mille / 10`` of non-empty ascending values, in
    integer arithmetic (so 99.9 % of 1000 values is the 999th, not the 1000th)."""
    rank = max(1, -(-per_mille * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles_ms(values: Sequence[int]) -> dict[str, float | None]:
    """``{p50, p99, p999, max}`` in milliseconds (3 decimals) of nanosecond values; every
    value is ``None`` when there are none."""
    if not values:
        return {"p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(values)
    out: dict[str, float | None] = {
        name: round(nearest_rank(ordered, per_mille) / 1e6, 3)
        for name, per_mille in (("p50", 500), ("p99", 990), ("p999", 999))
    }
    out["max"] = round(ordered[-1] / 1e6, 3)
    return out


def histogram_window(
    bounds: Sequence[float], start: Sequence[int], end: Sequence[int], scale: float = 1.0
) -> dict[str, float | None]:
    """What a node histogram saw between two snapshots of its non-cumulative counts over
    ``bounds`` + Inf: the bounds (times ``scale``) of the buckets holding the median, the
    99th percentile and the largest value (``None`` for the +Inf bucket or when nothing was
    observed), and ``writes``, the number of observations (one per write)."""
    counts = [b - a for a, b in zip(start, end, strict=True)]
    total = sum(counts)
    scaled: list[float | None] = [round(bound * scale, 6) for bound in bounds]
    scaled.append(None)
    out: dict[str, float | None] = {"writes": total, "p50": None, "p99": None, "max": None}
    if total == 0:
        return out
    running = 0
    for bound, count in zip(scaled, counts, strict=True):
        before = running
        running += count
        if before < 0.5 * total <= running and count:
            out["p50"] = bound
        if before < 0.99 * total <= running and count:
            out["p99"] = bound
        if count:
            out["max"] = bound
    return out


def _ratio(numerator: float, denominator: float, digits: int) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _total(loads: Sequence[dict[str, Any]], key: str) -> int:
    return sum(int(load.get(key, 0)) for load in loads)


def build_result(
    plan: SessionsPlan,
    loads: Sequence[dict[str, Any]],
    samples: Mapping[str, Sequence[int]],
    window: Window,
    pinned: tuple[int | None, int | None],
    loadavg_before: float,
) -> dict[str, Any]:
    """The result: parameters, delivery counts, latencies, rates, CPU, queues, drops.

    ``missing`` is expected deliveries (by each sent message's fan-out) minus stamped
    events received, over the whole run including the warmup; rates and CPU per delivery
    are over the measured window only and use the node's own delivery counter.
    """
    start, end, final = window.stats_start, window.stats_end, window.stats_final
    deliveries = int(end["deliveries"]) - int(start["deliveries"])
    publishes = int(end["publishes"]) - int(start["publishes"])
    expected = _total(loads, "expected")
    received = _total(loads, "received")
    in_window = _total(loads, "received_in_window")
    first_error = next((load["first_error"] for load in loads if load.get("first_error")), None)
    return {
        "bench": "sessions",
        "sessions": plan.sessions,
        "agents": plan.agents,
        "observers": plan.observers,
        "global_observers": plan.global_observers,
        "connections": plan.connections,
        "direct": plan.direct,
        "size": plan.size,
        "processes": plan.processes,
        "seconds": plan.seconds,
        "warmup": plan.warmup,
        "target_deliveries_per_s": plan.rate,
        "target_publishes_per_s": round(publish_rate(plan), 1),
        "deliveries_per_publish": round(
            deliveries_per_publish(plan.agents, plan.observers, plan.direct)
            + plan.global_observers,
            2,
        ),
        "connected": _total(loads, "connections"),
        "connect_s": max((float(load.get("connect_s", 0.0)) for load in loads), default=0.0),
        "published": _total(loads, "published"),
        "acked": _total(loads, "acked"),
        "publish_errors": _total(loads, "publish_errors"),
        "first_error": first_error,
        "expected": expected,
        "received": received,
        "missing": expected - received,
        "settled": all(bool(load.get("settled")) for load in loads),
        "client_disconnects": _total(loads, "disconnects"),
        "window_s": round(window.seconds, 3),
        "deliveries_per_s": _ratio(deliveries, window.seconds, 1),
        "publishes_per_s": _ratio(publishes, window.seconds, 1),
        "received_per_s": _ratio(in_window, window.seconds, 1),
        "e2e_latency_ms": percentiles_ms(samples.get("e2e", ())),
        "ack_latency_ms": percentiles_ms(samples.get("ack", ())),
        "send_lag_ms": percentiles_ms(samples.get("lag", ())),
        "server_cpu_s": round(window.server_cpu_s, 3),
        "server_cpu_share": _ratio(window.server_cpu_s, window.seconds, 3),
        "server_cpu_us_per_delivery": _ratio(window.server_cpu_s * 1e6, deliveries, 3),
        "load_cpu_s": round(window.load_cpu_s, 3),
        "load_cpu_share": _ratio(window.load_cpu_s, window.seconds, 3),
        "load_gc_longest_ms": max(
            (float(load.get("gc_longest_ms", 0.0)) for load in loads), default=0.0
        ),
        "server_gc_s": _rounded(float(end.get("gc_s", 0.0)) - float(start.get("gc_s", 0.0))),
        "server_gc_full": int(end.get("gc_full", 0)) - int(start.get("gc_full", 0)),
        "server_gc_longest_ms": _rounded(float(end.get("gc_longest_ms", 0.0))),
        "server_runqueue_wait_s": _rounded(window.server_wait_s),
        "load_runqueue_wait_s": _rounded(window.load_wait_s),
        "writes_per_delivery": _ratio(int(end["writes"]) - int(start["writes"]), deliveries, 3),
        "server_write_latency_ms": histogram_window(
            LATENCY_BUCKETS, start["write_latency_counts"], end["write_latency_counts"], 1e3
        ),
        "queue_at_write": histogram_window(
            QUEUE_BUCKETS, start["queue_counts"], end["queue_counts"]
        ),
        "queued_max_at_end": int(end["queued_max"]),
        "drops": int(final["drops"]),
        "slow_disconnects": int(final["slow_disconnects"]),
        "pinned": {"server": pinned[0], "load": pinned[1]},
        "loadavg_1m_before": loadavg_before,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def _lat(name: str, lat: dict[str, Any]) -> str:
    return (
        f"  {name}: p50 {_fmt(lat['p50'], ' ms')}  p99 {_fmt(lat['p99'], ' ms')}  "
        f"p999 {_fmt(lat['p999'], ' ms')}  max {_fmt(lat['max'], ' ms')}"
    )


def summary(result: dict[str, Any]) -> str:
    """A few readable lines about ``result`` (for stderr)."""
    queue = result["queue_at_write"]
    written = result["server_write_latency_ms"]
    return "\n".join(
        [
            f"sessions: {result['sessions']} x ({result['agents']} agents + "
            f"{result['observers']} observers) + {result['global_observers']} tenant-wide = "
            f"{result['connections']} connections, "
            f"target {result['target_deliveries_per_s']:g} deliveries/s "
            f"({result['target_publishes_per_s']:g} publishes/s)",
            f"  measured {result['window_s']} s: {_fmt(result['deliveries_per_s'])} deliveries/s,"
            f" {_fmt(result['publishes_per_s'])} publishes/s",
            f"  received {result['received']}/{result['expected']} "
            f"(missing {result['missing']}), acked {result['acked']}/{result['published']}",
            _lat("publish-to-receive", result["e2e_latency_ms"]),
            _lat("publish ack", result["ack_latency_ms"]),
            _lat("send lag of the load", result["send_lag_ms"]),
            f"  node publish-to-write (bucket bounds): p50 <= {_fmt(written['p50'], ' ms')}  "
            f"p99 <= {_fmt(written['p99'], ' ms')}  max <= {_fmt(written['max'], ' ms')}",
            f"  server CPU {result['server_cpu_s']} s ({_fmt(result['server_cpu_share'])} of a "
            f"core) = {_fmt(result['server_cpu_us_per_delivery'], ' us')} per delivery; load CPU"
            f" {result['load_cpu_s']} s ({_fmt(result['load_cpu_share'])} of a core, longest"
            f" garbage collection {result['load_gc_longest_ms']} ms)",
            f"  server garbage collection {result['server_gc_s']} s, "
            f"{result['server_gc_full']} full, longest {result['server_gc_longest_ms']} ms",
            f"  runnable but waiting for a CPU: server "
            f"{_fmt(result['server_runqueue_wait_s'], ' s')}, load "
            f"{_fmt(result['load_runqueue_wait_s'], ' s')}",
            f"  queue at write p99 <= {_fmt(queue['p99'])}, max <= {_fmt(queue['max'])}; drops "
            f"{result['drops']}, slow-consumer disconnects {result['slow_disconnects']}",
        ]
    )
