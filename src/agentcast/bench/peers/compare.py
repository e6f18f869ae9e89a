"""Several servers and subscriber counts in one run: ``bench fanout --server a,b,...``.

For each subscriber count (in the order given) every server is measured once, one after
the other, by :func:`~agentcast.bench.fanout.run_fanout` with the same load plan; agentcast
goes first when listed, so each later row can carry its ratios at once. Each row is the
single-run result of :func:`~agentcast.bench.fanout_result.build_result` plus
(:func:`comparison_row`):

* ``run``: the run's start time (rows of one run share it);
* ``drain_timeout_s``: the drain bound of this run (:func:`drain_timeout_for`);
* ``publisher_disconnected``: the server closed the publisher's connection during the run;
* ``latency_cdf_ms``: the latency distribution (:mod:`agentcast.bench.peers.cdf`);
* ``agentcast_advantage``: ``{"delivered_per_s": agentcast's / this server's,
  "cpu_per_delivery": this server's / agentcast's}`` at the same subscriber count (above 1
  means agentcast is ahead; ``None`` without an agentcast row or a figure);
* ``error``: only on a row for a server that produced no result (the other keys then hold
  the parameters only).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agentcast.bench.children import BenchError
from agentcast.bench.fanout import DRAIN_TIMEOUT, run_fanout
from agentcast.bench.fanout_result import FanoutParams, build_result, mode_of, summary
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result

#: Deliveries per second of drain time granted beyond :data:`DRAIN_TIMEOUT`.
DRAIN_DELIVERIES_PER_S = 10_000


def drain_timeout_for(expected: int) -> float:
    """The drain bound of a comparison: long enough for a server delivering
    :data:`DRAIN_DELIVERIES_PER_S` to finish, never under the single run's bound."""
    return max(DRAIN_TIMEOUT, expected / DRAIN_DELIVERIES_PER_S)


def _advantage(result: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    def ratio(top: object, bottom: object) -> float | None:
        if not isinstance(top, int | float) or not isinstance(bottom, int | float) or not bottom:
            return None
        return round(top / bottom, 2)

    if reference is None:
        return {"delivered_per_s": None, "cpu_per_delivery": None}
    return {
        "delivered_per_s": ratio(reference["delivered_per_s"], result["delivered_per_s"]),
        "cpu_per_delivery": ratio(
            result["server_cpu_us_per_delivery"], reference["server_cpu_us_per_delivery"]
        ),
    }


def comparison_row(
    result: dict[str, Any],
    measured: dict[str, Any],
    reference: dict[str, Any] | None,
    *,
    run: str,
    drain_timeout: float,
) -> dict[str, Any]:
    """``result`` plus the comparison keys of the module's docstring."""
    return {
        **result,
        "run": run,
        "drain_timeout_s": drain_timeout,
        "publisher_disconnected": bool(measured.get("publisher_disconnected")),
        "latency_cdf_ms": measured.get("latency_cdf_ms", []),
        "agentcast_advantage": _advantage(result, reference),
    }


def error_row(params: FanoutParams, error: str, *, run: str) -> dict[str, Any]:
    """The row of a server that produced no result."""
    return {
        "bench": "fanout",
        "mode": mode_of(params),
        "server": params.server,
        "subscribers": params.subscribers,
        "messages": params.messages,
        "size": params.size,
        "rate": params.rate,
        "run": run,
        "error": error,
    }


def ordered(servers: list[str]) -> list[str]:
    """``servers`` with agentcast first (when listed), the others in the order given."""
    return sorted(servers, key=lambda name: name != "agentcast")


def run_comparison(
    servers: list[str],
    counts: list[int],
    base: FanoutParams,
    *,
    quiet: bool,
    output: str | None,
) -> int:
    """Measure every server at every count; print (and append to ``output``) one row each.

    Exit status: 2 if a server produced no result, else 1 if a row shows loss or disorder,
    else 0.
    """
    pinned = pick_cpus()
    run = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    status = 0
    for count in counts:
        reference: dict[str, Any] | None = None
        for server in ordered(servers):
            params = replace(base, server=server, subscribers=count)
            drain = drain_timeout_for(count * params.messages)
            try:
                measured = run_fanout(params, pinned, quiet=quiet, drain_timeout=drain)
            except BenchError as exc:
                print(f"agentcast bench fanout: {server}: {exc}", file=sys.stderr)
                emit_result(error_row(params, str(exc), run=run), output=output, summary=None)
                status = 2
                continue
            result = build_result(params, measured, pinned)
            if server == "agentcast":
                reference = result
            row = comparison_row(result, measured, reference, run=run, drain_timeout=drain)
            emit_result(row, output=output, summary=None if quiet else summary(result))
            if status == 0 and (result["lost"] or result["out_of_order"]):
                status = 1
    return status
