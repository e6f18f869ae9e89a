"""A sliding time window of event counts and latency samples (pure, clock passed in).

:class:`SlidingWindow` answers "how many per second, and what were the p50/p99 latencies,
over the last ``span`` seconds" in bounded memory at any event rate:

* time is cut into buckets of ``resolution`` seconds; a bucket leaves the window whole once
  it is older than ``span``, so the window covers between ``span - resolution`` and ``span``
  seconds of history (the rate divides by the time actually covered, and never by more than
  the time since ``start``, so a young window does not under-report);
* each bucket keeps at most ``max_samples`` latency samples, chosen by reservoir sampling when
  more arrive, so quantiles are exact until a bucket overflows and an unbiased estimate after.

Every method takes ``now`` (seconds on any monotonic clock); times must not go backwards
by more than a bucket (an older time is counted in the newest bucket).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence


class _Bucket:
    __slots__ = ("count", "index", "samples", "seen")

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.seen = 0
        self.samples: list[float] = []


class SlidingWindow:
    """Counts and latency samples of the last ``span`` seconds."""

    __slots__ = ("_buckets", "_rng", "max_samples", "resolution", "span", "start")

    def __init__(
        self,
        start: float,
        *,
        span: float = 5.0,
        resolution: float = 0.25,
        max_samples: int = 1024,
        rng: random.Random | None = None,
    ) -> None:
        if span <= 0 or resolution <= 0 or resolution > span:
            raise ValueError("need 0 < resolution <= span")
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.start = start
        self.span = span
        self.resolution = resolution
        self.max_samples = max_samples
        self._rng = rng or random.Random()
        self._buckets: deque[_Bucket] = deque()

    @property
    def _slots(self) -> int:
        return max(1, round(self.span / self.resolution))

    def _index(self, now: float) -> int:
        return math.floor(now / self.resolution)

    def _expire(self, index: int) -> None:
        oldest = index - self._slots + 1
        buckets = self._buckets
        while buckets and buckets[0].index < oldest:
            buckets.popleft()

    def _bucket(self, now: float) -> _Bucket:
        index = self._index(now)
        buckets = self._buckets
        if buckets and buckets[-1].index >= index:
            return buckets[-1]
        bucket = _Bucket(index)
        buckets.append(bucket)
        self._expire(index)
        return bucket

    def add(self, now: float, count: int = 1) -> None:
        """Count ``count`` events at ``now`` (no latency sample)."""
        self._bucket(now).count += count

    def observe(self, now: float, latency: float) -> None:
        """Count one event at ``now`` that took ``latency`` (any unit, returned as is)."""
        bucket = self._bucket(now)
        bucket.count += 1
        bucket.seen += 1
        samples = bucket.samples
        if len(samples) < self.max_samples:
            samples.append(latency)
        else:
            slot = self._rng.randrange(bucket.seen)
            if slot < self.max_samples:
                samples[slot] = latency

    def count(self, now: float) -> int:
        """Events counted in the window ending at ``now``."""
        self._expire(self._index(now))
        return sum(bucket.count for bucket in self._buckets)

    def rate(self, now: float) -> float:
        """Events per second over the window ending at ``now``."""
        index = self._index(now)
        window_start = max(self.start, (index - self._slots + 1) * self.resolution)
        covered = now - window_start
        if covered <= 0:
            return 0.0
        return self.count(now) / covered

    def quantiles(self, now: float, qs: Sequence[float]) -> list[float] | None:
        """The nearest-rank quantiles ``qs`` (each in [0, 1]) of the window's latency
        samples, or ``None`` when it holds none."""
        self._expire(self._index(now))
        samples = sorted(value for bucket in self._buckets for value in bucket.samples)
        if not samples:
            return None
        last = len(samples) - 1
        return [samples[min(last, max(0, math.ceil(q * len(samples)) - 1))] for q in qs]
