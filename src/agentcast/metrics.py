"""Prometheus exposition of a hub's counters (read at scrape time, never per message)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agentcast.hub.hub import Hub
from agentcast.hub.stats import Histogram


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), count)
        for bound, count in hist.cumulative()
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.total)


class HubCollector(Collector):
    """Yields the ``agentcast_*`` families for one hub (see docs/operations.md)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.stats
        yield GaugeMetricFamily(
            "agentcast_connections", "Open client connections.", value=len(hub.connections)
        )
        yield GaugeMetricFamily(
            "agentcast_subscriptions", "Active subscriptions.", value=len(hub.index)
        )
        yield GaugeMetricFamily(
            "agentcast_queued_messages",
            "Frames waiting in outbound queues.",
            value=sum(len(conn.queue) for conn in hub.connections.values()),
        )
        counters = {
            "agentcast_connections_opened": ("Connections accepted.", stats.connections_opened),
            "agentcast_publishes": ("Publications accepted.", stats.publishes),
            "agentcast_duplicate_publishes": (
                "Publishes answered from the idempotency window.",
                stats.duplicates + (hub.durable_log.duplicates if hub.durable_log else 0),
            ),
            "agentcast_deliveries": ("Event frames written to connections.", stats.deliveries),
            "agentcast_writes": ("Transport writes (after coalescing).", stats.writes),
            "agentcast_bytes_written": ("Bytes handed to transports.", stats.bytes_written),
            "agentcast_slow_consumer_disconnects": (
                "Connections closed by the disconnect policy.",
                stats.slow_disconnects,
            ),
            "agentcast_command_errors": ("Commands refused with an error.", stats.errors),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        yield from self._durable()
        drops = CounterMetricFamily(
            "agentcast_drops", "Events dropped by a slow-consumer policy.", labels=["policy"]
        )
        for policy, value in sorted(stats.drops.items()):
            drops.add_metric([policy], value)
        yield drops
        yield _histogram(
            "agentcast_queue_length",
            "Outbound queue length seen by each writer flush.",
            stats.queue_length,
        )
        yield _histogram(
            "agentcast_publish_to_write_seconds",
            "Time from publication to transport write (oldest frame of each flush).",
            stats.write_latency,
        )

    def _durable(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.stats
        durable_log = hub.durable_log
        if durable_log is not None:
            yield CounterMetricFamily(
                "agentcast_durable_commits",
                "Store appends (group commits).",
                value=durable_log.batches,
            )
            yield CounterMetricFamily(
                "agentcast_durable_appended", "Durable events stored.", value=durable_log.appended
            )
            yield CounterMetricFamily(
                "agentcast_durable_failures",
                "Store appends that failed.",
                value=durable_log.failures,
            )
            yield GaugeMetricFamily(
                "agentcast_durable_pending",
                "Durable publishes waiting for a commit.",
                value=len(durable_log),
            )
        groups = hub.groups
        if groups is not None:
            yield CounterMetricFamily(
                "agentcast_group_deliveries",
                "Consumer-group deliveries, redeliveries included.",
                value=stats.group_deliveries,
            )
            yield CounterMetricFamily(
                "agentcast_group_dead_letters",
                "Events dead-lettered by consumer groups.",
                value=stats.group_dead_letters,
            )
            runners = list(groups.runners.values())
            yield GaugeMetricFamily(
                "agentcast_group_pending",
                "Events waiting in groups.",
                value=sum(r.group.pending for r in runners),
            )
            yield GaugeMetricFamily(
                "agentcast_group_in_flight",
                "Unacked group deliveries.",
                value=sum(len(r.group.inflight) for r in runners),
            )


def make_registry(hub: Hub) -> CollectorRegistry:
    """A registry holding the hub's families and the process's CPU and memory."""
    registry = CollectorRegistry()
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
