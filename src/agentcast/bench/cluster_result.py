"""The cluster benchmark's result object and its human-readable summary (pure functions)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentcast.bench.fanout_result import FanoutParams

BROKERS = ("redis", "nats")
SINGLE_KEYS = (
    "expected",
    "delivered",
    "lost",
    "out_of_order",
    "duration_s",
    "delivered_per_s",
    "latency_ms",
    "server_cpu_s",
    "server_cpu_us_per_delivery",
    "load_cpu_s",
    "connect_s",
    "published",
    "acked",
    "publish_errors",
    "first_error",
    "disconnects",
)


@dataclass(slots=True, frozen=True)
class ClusterParams:
    """What was asked for: ``nodes`` nodes linked by ``broker`` (``redis`` or ``nats``)."""

    broker: str
    nodes: int
    subscribers: int
    messages: int
    size: int
    rate: float

    @property
    def mode(self) -> str:
        return "paced" if self.rate > 0 else "burst"

    def single(self) -> FanoutParams:
        """The same workload on one node without a broker (the fan-out benchmark's params)."""
        return FanoutParams(
            server="agentcast",
            subscribers=self.subscribers,
            messages=self.messages,
            size=self.size,
            rate=self.rate,
            idle=False,
        )


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def _per_node(index: int, node: dict[str, Any], messages: int) -> dict[str, Any]:
    subscribers = int(node["subscribers"])
    delivered = int(node["delivered"])
    return {
        "node": index,
        "publisher": index == 0,
        "subscribers": subscribers,
        "delivered": delivered,
        "lost": subscribers * messages - delivered,
        "out_of_order": int(node["out_of_order"]),
        "disconnects": int(node["disconnects"]),
        "latency_ms": node["latency_ms"],
        "server_cpu_s": node["server_cpu_s"],
        "server_rss_before_kb": int(node["server_rss_before"]) // 1024,
        "server_rss_after_kb": int(node["server_rss_after"]) // 1024,
    }


def cluster_figures(params: ClusterParams, measured: dict[str, Any]) -> dict[str, Any]:
    """The cluster half of the result from the cluster load's raw measurements.

    ``lost`` is ``subscribers * messages - delivered`` (in total and per node).
    """
    expected = params.subscribers * params.messages
    delivered = int(measured.get("delivered", 0))
    duration = measured.get("duration_s")
    server_cpu = measured.get("server_cpu_s")
    cpu_us = _ratio(server_cpu * 1e6 if server_cpu is not None else None, delivered, 3)
    return {
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "out_of_order": int(measured.get("out_of_order", 0)),
        "duration_s": duration,
        "delivered_per_s": _ratio(float(delivered), duration, 1),
        "latency_ms": measured.get("latency_ms") or {"p50": None, "p99": None, "max": None},
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_delivery": cpu_us,
        "load_cpu_s": measured.get("load_cpu_s"),
        "broker_cpu_s": measured.get("broker_cpu_s"),
        "connect_s": measured.get("connect_s"),
        "warmup_rounds": measured.get("warmup_rounds"),
        "warmup_s": measured.get("warmup_s"),
        "published": measured.get("published", 0),
        "acked": measured.get("acked", 0),
        "publish_errors": measured.get("publish_errors", 0),
        "first_error": measured.get("first_error"),
        "disconnects": measured.get("disconnects", 0),
        "per_node": [
            _per_node(index, node, params.messages)
            for index, node in enumerate(measured.get("nodes", []))
        ],
    }


def build_result(
    params: ClusterParams,
    cluster_measured: dict[str, Any],
    single_result: dict[str, Any],
    pinned: tuple[int | None, int | None],
    loadavg_before: float,
) -> dict[str, Any]:
    """Combine both halves: ``cluster`` (:func:`cluster_figures`), ``single`` (the
    :data:`SINGLE_KEYS` of the fan-out benchmark's result for the same workload) and
    ``ratio`` (cluster / single; ``None`` where a figure is missing or 0)."""
    cluster = cluster_figures(params, cluster_measured)
    single = {key: single_result.get(key) for key in SINGLE_KEYS}
    latency: dict[str, Any] = cluster["latency_ms"]
    single_latency: dict[str, Any] = single["latency_ms"] or {}
    ratio = {
        "delivered_per_s": _ratio(cluster["delivered_per_s"], single["delivered_per_s"], 3),
        "latency_p50": _ratio(latency["p50"], single_latency.get("p50"), 3),
        "latency_p99": _ratio(latency["p99"], single_latency.get("p99"), 3),
        "server_cpu_us_per_delivery": _ratio(
            cluster["server_cpu_us_per_delivery"], single["server_cpu_us_per_delivery"], 3
        ),
    }
    return {
        "bench": "cluster",
        "mode": params.mode,
        "broker": params.broker,
        "nodes": params.nodes,
        "subscribers": params.subscribers,
        "messages": params.messages,
        "size": params.size,
        "rate": params.rate,
        "cluster": cluster,
        "single": single,
        "ratio": ratio,
        "pinned": {"nodes": pinned[0], "load": pinned[1]},
        "loadavg_1m_before": loadavg_before,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def lost_nothing(result: dict[str, Any]) -> bool:
    """Whether both halves delivered every event, in order."""
    return all(
        result[half]["lost"] == 0 and result[half]["out_of_order"] == 0
        for half in ("cluster", "single")
    )


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def _half(name: str, figures: dict[str, Any]) -> str:
    latency = figures["latency_ms"]
    return (
        f"  {name}: delivered {figures['delivered']}/{figures['expected']} "
        f"(lost {figures['lost']}, out of order {figures['out_of_order']}) "
        f"= {_fmt(figures['delivered_per_s'])}/s, "
        f"p50 {_fmt(latency['p50'], ' ms')} p99 {_fmt(latency['p99'], ' ms')}, "
        f"server CPU {_fmt(figures['server_cpu_s'], ' s')} "
        f"({_fmt(figures['server_cpu_us_per_delivery'], ' us')} per delivery)"
    )


def summary(result: dict[str, Any]) -> str:
    """A few readable lines about ``result`` (for stderr)."""
    rate = f" at {result['rate']:g}/s" if result["mode"] == "paced" else ""
    lines = [
        f"cluster {result['mode']}: {result['nodes']} nodes over {result['broker']}, "
        f"{result['subscribers']} subscribers x {result['messages']} messages "
        f"x {result['size']} B{rate}",
        _half("cluster", result["cluster"]),
    ]
    for node in result["cluster"]["per_node"]:
        role = " (publisher)" if node["publisher"] else ""
        lines.append(
            f"    node {node['node']}{role}: {node['delivered']} delivered to "
            f"{node['subscribers']} subscribers, p99 {_fmt(node['latency_ms']['p99'], ' ms')}, "
            f"CPU {_fmt(node['server_cpu_s'], ' s')}"
        )
    lines.append(
        f"    broker CPU {_fmt(result['cluster']['broker_cpu_s'], ' s')}, "
        f"load CPU {_fmt(result['cluster']['load_cpu_s'], ' s')}"
    )
    lines.append(_half("single", result["single"]))
    ratio = result["ratio"]
    lines.append(
        f"  cluster / single: delivered/s {_fmt(ratio['delivered_per_s'])}, "
        f"p50 {_fmt(ratio['latency_p50'])}, p99 {_fmt(ratio['latency_p99'])}, "
        f"CPU per delivery {_fmt(ratio['server_cpu_us_per_delivery'])}"
    )
    return "\n".join(lines)
