"""Small statistics helpers of the benchmarks (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of non-empty, ascending values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    # round first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point
    rank = max(1, math.ceil(round(q / 100.0 * len(sorted_values), 9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(latencies_ns: Sequence[int]) -> dict[str, float | None]:
    """``{p50, p99, max}`` in milliseconds (3 decimals) of nanosecond latencies.

    Every value is ``None`` when there are no latencies.
    """
    if not latencies_ns:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(latencies_ns)
    return {
        "p50": round(percentile(ordered, 50) / 1e6, 3),
        "p99": round(percentile(ordered, 99) / 1e6, 3),
        "max": round(ordered[-1] / 1e6, 3),
    }
