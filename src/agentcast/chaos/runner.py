"""Run one scenario: a scratch directory, an overall deadline, and a JSON-ready result.

A scenario that cannot run (a process that does not start, a phase past its deadline) is
not a pass: it becomes a failing ``scenario_ran`` verdict, so the command still exits
non-zero and says why.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from agentcast.chaos.invariants import Verdict
from agentcast.chaos.scenarios import SCENARIOS
from agentcast.chaos.scenarios.common import ScenarioResult, Settings

DEADLINE_MARGIN = 180.0  # seconds a scenario may run past its main phase


async def run_scenario(
    name: str, *, short: bool = False, seconds: float | None = None
) -> dict[str, Any]:
    """Run scenario ``name`` and return its result as a JSON-ready dict (``ok`` is false
    when any verdict failed)."""
    scenario, _ = SCENARIOS[name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"agentcast-chaos-{name}-") as tmp:
        settings = Settings(directory=Path(tmp), short=short, seconds=seconds)
        budget = settings.length(full=60.0, short=20.0) * 3 + DEADLINE_MARGIN
        try:
            async with asyncio.timeout(budget):
                result = await scenario(settings)
        except Exception as exc:  # reported as a failing verdict, with the reason
            detail = "".join(traceback.format_exception_only(exc)).strip()
            result = ScenarioResult([Verdict("scenario_ran", False, detail[-1500:])])
    return {
        "scenario": name,
        "short": short,
        "ok": result.ok,
        "seconds": round(time.monotonic() - started, 2),
        "verdicts": [v.to_dict() for v in result.verdicts],
        "stats": result.stats,
    }


def summary(result: dict[str, Any]) -> str:
    """The human view: one verdict line per invariant, then the scenario's outcome."""
    lines = [
        f"{'PASS' if v['ok'] else 'FAIL'} {result['scenario']} {v['name']}: {v['detail']}"
        for v in result["verdicts"]
    ]
    outcome = "ok" if result["ok"] else "FAILED"
    lines.append(f"{result['scenario']}: {outcome} in {result['seconds']:.1f} s")
    return "\n".join(lines)
