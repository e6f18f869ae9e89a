"""The latency distribution a comparison run keeps for its plots (a pure function)."""

from __future__ import annotations

from collections.abc import Sequence

from agentcast.bench.stats import percentile

#: The quantiles (in percent) of :func:`latency_cdf_ms`: every half percent plus the tail.
CDF_QUANTILES: tuple[float, ...] = (
    *(step / 2 for step in range(1, 199)),
    99.5,
    99.9,
    100.0,
)


def latency_cdf_ms(latencies_ns: Sequence[int]) -> list[list[float]]:
    """``[[quantile_percent, latency_ms], ...]`` at :data:`CDF_QUANTILES` (nearest rank, ms
    with 3 decimals), ascending in both; an empty list when there are no latencies."""
    if not latencies_ns:
        return []
    ordered = sorted(latencies_ns)
    return [[q, round(percentile(ordered, q) / 1e6, 3)] for q in CDF_QUANTILES]
