"""``agentcast chaos SCENARIO``: run chaos scenarios and judge them by their invariants.

Each verdict is printed on stderr as ``PASS|FAIL scenario invariant: detail``; the result
of each scenario is one JSON line on stdout (appended to ``--output`` too). The exit status
is 1 when any invariant broke, 0 otherwise. ``list`` prints the scenarios; ``all`` runs
every one in turn.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

NAMES = ("kill_node", "broker_restart", "stuck_consumer", "reconnect_loop", "broker_faults")


@click.command("chaos")
@click.argument("scenario", type=click.Choice(["list", "all", *NAMES]))
@click.option("--short", is_flag=True, help="The short version (as run in CI).")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5, max=3600),
    default=None,
    help="Length of each scenario's main phase (default: its own, shorter with --short).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only verdicts and JSON results.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append each JSON result as one line to this file.",
)
def chaos(
    scenario: str, short: bool, seconds: float | None, as_json: bool, output: str | None
) -> None:
    """Run a chaos SCENARIO (or `all`, or `list` them) and check its invariants."""
    from agentcast.bench.report import emit_result
    from agentcast.chaos.runner import run_scenario, summary
    from agentcast.chaos.scenarios import SCENARIOS

    if scenario == "list":
        for name, (_, description) in SCENARIOS.items():
            click.echo(f"{name:16} {description}")
        return
    # Writes to sockets of killed nodes are expected here; asyncio would warn about each.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    failed = False
    for name in names:
        if not as_json:
            click.echo(f"running {name}{' (short)' if short else ''} ...", err=True)
        result = asyncio.run(run_scenario(name, short=short, seconds=seconds))
        emit_result(result, output=output, summary=summary(result))
        failed = failed or not result["ok"]
    sys.exit(1 if failed else 0)
