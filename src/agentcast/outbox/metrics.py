"""Prometheus metrics of a relay process (its own registry, so several relays can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RelayMetrics:
    """``agentcast_outbox_lag_seconds`` (age of the oldest unpublished row, 0 when none),
    ``agentcast_outbox_published_total`` (rows the node accepted and the relay marked),
    ``agentcast_outbox_retries_total`` (publishes that failed and will be retried),
    ``agentcast_outbox_purged_total`` (published rows deleted by retention) and
    ``agentcast_outbox_partitions_held``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.lag = Gauge(
            "agentcast_outbox_lag_seconds",
            "Age of the oldest unpublished outbox row (0 when none is pending).",
            registry=self.registry,
        )
        self.published = Counter(
            "agentcast_outbox_published",
            "Outbox rows published to the node and marked published.",
            registry=self.registry,
        )
        self.retries = Counter(
            "agentcast_outbox_retries",
            "Outbox publishes that failed and will be retried.",
            registry=self.registry,
        )
        self.purged = Counter(
            "agentcast_outbox_purged",
            "Published outbox rows deleted by retention.",
            registry=self.registry,
        )
        self.partitions = Gauge(
            "agentcast_outbox_partitions_held",
            "Outbox partitions this relay holds a lease on.",
            registry=self.registry,
        )
