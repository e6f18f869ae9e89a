"""Prometheus metrics of an orchestrator, read from its counters at scrape time.

``agentcast_workflow_transitions_total``, ``..._duplicates_total`` (redelivered events
skipped), ``..._parked_total``, ``..._ignored_total``, ``..._intents_total`` (outbox rows
written), ``..._failures_total`` (events or wake-ups whose handler raised),
``..._wakeups_total`` (timers and expectations fired), ``..._batches_total``, and the
histogram ``agentcast_workflow_batch_seconds`` (one transaction's time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agentcast.orchestration.orchestrator import OrchestratorStats

_COUNTERS = {
    "applied": ("transitions", "Workflow transitions committed."),
    "duplicates": ("duplicates", "Redelivered events an instance had already applied."),
    "parked": ("parked", "Events kept until their instance starts."),
    "ignored": ("ignored", "Inputs that changed nothing."),
    "sent": ("intents", "Outbox rows written by transitions."),
    "failures": ("failures", "Events or wake-ups whose handler raised."),
    "wakeups": ("wakeups", "Timers and expectations fired."),
    "batches": ("batches", "Transactions of delivered events."),
}


class _StatsCollector(Collector):
    def __init__(self, stats: OrchestratorStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        for attribute, (name, documentation) in _COUNTERS.items():
            family = CounterMetricFamily(f"agentcast_workflow_{name}", documentation)
            family.add_metric([], getattr(self.stats, attribute))
            yield family


class OrchestratorMetrics:
    """The orchestrator's families on ``registry`` (a new one by default)."""

    def __init__(self, stats: OrchestratorStats, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_StatsCollector(stats))
        self.batch_seconds = Histogram(
            "agentcast_workflow_batch_seconds",
            "Time to apply one batch of events in one transaction.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
