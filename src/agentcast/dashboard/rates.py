"""Rates of the hub's counters over a recent window, sampled when the dashboard asks.

There is no timer: each :meth:`NodeSampler.sample` (one per ``/v1/stats`` request, from any
number of open dashboards) records the counters at most every ``min_gap`` seconds and keeps
at most ``max_samples`` of them; a rate is the difference between now and the newest sample
at least ``window`` seconds old (or the oldest one kept), divided by the time between them.
The same difference of the latency histogram gives its recent buckets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agentcast.hub.stats import HubStats

DEFAULT_WINDOW = 5.0
MIN_GAP = 0.25
MAX_SAMPLES = 256


@dataclass(slots=True, frozen=True)
class Sample:
    """The hub's counters at one moment."""

    at: float
    publishes: int
    deliveries: int
    writes: int
    errors: int
    drops: int
    latency: tuple[int, ...]

    @classmethod
    def of(cls, stats: HubStats, at: float) -> Sample:
        return cls(
            at=at,
            publishes=stats.publishes,
            deliveries=stats.deliveries,
            writes=stats.writes,
            errors=stats.errors,
            drops=sum(stats.drops.values()),
            latency=tuple(stats.write_latency.counts),
        )


@dataclass(slots=True, frozen=True)
class Rates:
    """Per-second rates over ``window`` seconds and the latency buckets filled in it."""

    window: float
    publishes: float
    deliveries: float
    writes: float
    errors: float
    drops: float
    latency: tuple[int, ...]


class NodeSampler:
    """Keeps recent samples of one hub's counters (see the module docstring)."""

    def __init__(
        self,
        stats: HubStats,
        start: float,
        *,
        window: float = DEFAULT_WINDOW,
        min_gap: float = MIN_GAP,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self.stats = stats
        self.window = window
        self.min_gap = min_gap
        self._samples: deque[Sample] = deque([Sample.of(stats, start)], maxlen=max_samples)

    def __len__(self) -> int:
        return len(self._samples)

    def sample(self, now: float) -> Rates:
        """Record the counters (unless the last sample is younger than ``min_gap``) and
        return the rates from the reference sample to now."""
        current = Sample.of(self.stats, now)
        samples = self._samples
        if now - samples[-1].at >= self.min_gap:
            samples.append(current)
        base = samples[0]
        for candidate in samples:
            if now - candidate.at >= self.window:
                base = candidate
            else:
                break
        elapsed = now - base.at
        if elapsed <= 0:
            zero = tuple(0 for _ in current.latency)
            return Rates(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, zero)

        def per_second(now_value: int, then_value: int) -> float:
            return max(0, now_value - then_value) / elapsed

        return Rates(
            window=elapsed,
            publishes=per_second(current.publishes, base.publishes),
            deliveries=per_second(current.deliveries, base.deliveries),
            writes=per_second(current.writes, base.writes),
            errors=per_second(current.errors, base.errors),
            drops=per_second(current.drops, base.drops),
            latency=tuple(
                max(0, a - b) for a, b in zip(current.latency, base.latency, strict=True)
            ),
        )
