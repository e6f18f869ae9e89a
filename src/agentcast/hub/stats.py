"""Cheap counters and histograms updated on the hot path and read at scrape time.

Plain integers and bucket arrays: no locks, no label lookups per message. The metrics module
turns them into Prometheus families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
QUEUE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """A fixed-bucket histogram: ``counts[i]`` counts observations <= ``bounds[i]``
    (non-cumulative; the last slot is +Inf)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, cumulative count)`` pairs ending with ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """An upper-bound estimate of quantile ``q`` (the bucket bound that holds it)."""
        if self.count == 0:
            return 0.0
        target = q * self.count
        for bound, running in self.cumulative():
            if running >= target:
                return bound
        return float("inf")


@dataclass(slots=True)
class HubStats:
    """Counters of one hub since start."""

    connections_opened: int = 0
    connections_closed: int = 0
    publishes: int = 0
    duplicates: int = 0
    deliveries: int = 0
    writes: int = 0
    bytes_written: int = 0
    slow_disconnects: int = 0
    errors: int = 0
    group_deliveries: int = 0
    group_dead_letters: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    queue_length: Histogram = field(default_factory=lambda: Histogram(QUEUE_BUCKETS))
    write_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
