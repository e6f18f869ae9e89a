"""Prometheus families of the security layer (``agentcast_auth_*``, ``..._refused``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentcast.security.guard import Security


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class SecurityCollector(Collector):
    """Yields the security families of one node; register it next to the hub's collector."""

    def __init__(self, security: Security) -> None:
        self.security = security

    def collect(self) -> Iterator[Metric]:
        stats = self.security.stats
        yield _labelled(
            "agentcast_auth_failures",
            "Credentials refused (code unauthorized), by reason.",
            "reason",
            stats.auth_failures,
        )
        yield _labelled(
            "agentcast_forbidden",
            "Operations refused by capabilities or tenant isolation (code forbidden).",
            "operation",
            stats.forbidden,
        )
        yield _labelled(
            "agentcast_rate_limited",
            "Publishes refused by a rate limit (code rate_limited), by transport.",
            "transport",
            stats.rate_limited,
        )
        yield _labelled(
            "agentcast_connections_refused",
            "Connections refused by the Origin allowlist or a connection limit, by reason.",
            "reason",
            stats.connections_refused,
        )
        yield GaugeMetricFamily(
            "agentcast_authenticated_connections",
            "Connections holding a counted slot (per-tenant/per-subject limits).",
            value=stats.authenticated,
        )
