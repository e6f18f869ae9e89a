"""The ``agentcast bench workflow`` command (options only; the run, in
:mod:`agentcast.bench.workflow_run`, is imported when the command runs).

For every workflow database of ``--db`` the run starts a fresh database, a node, an
orchestrator and a load process, measures transitions per second (throughput phase) and
event-published to intent-delivered latency (latency phase), and prints one JSON object
(see :mod:`agentcast.bench.workflow_run` and docs/benchmarks.md, "Workflows").
"""

from __future__ import annotations

import sys
from typing import Any

import click

NODE_HISTORIES = ("memory", "sqlite")
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@click.command("workflow")
@click.option(
    "--db",
    "dbs",
    default="sqlite,postgres",
    show_default=True,
    help="Workflow databases to measure, comma-separated: sqlite, postgres.",
)
@click.option(
    "--events", type=int, default=10_000, show_default=True, help="Throughput-phase events."
)
@click.option(
    "--instances",
    type=int,
    default=100,
    show_default=True,
    help="Workflow instances (correlation ids) the events are spread over, per phase.",
)
@click.option(
    "--window", type=int, default=256, show_default=True, help="Unacked publishes (throughput)."
)
@click.option(
    "--rate", type=float, default=100.0, show_default=True, help="Latency-phase events/s."
)
@click.option(
    "--seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Latency-phase duration (0: skip the latency phase).",
)
@click.option("--batch", type=int, default=256, show_default=True, help="Orchestrator batch.")
@click.option(
    "--node-history",
    type=click.Choice(NODE_HISTORIES),
    default="memory",
    show_default=True,
    help="The node's history store for the durable bench.> topics.",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds each phase may wait for its transitions before it is cut short.",
)
@click.option(
    "--postgres-dsn",
    "pg_dsn",
    default=DEFAULT_PG_DSN,
    show_default=True,
    help="PostgreSQL for --db postgres (a throwaway schema per row, dropped after).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the JSON result as one line to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
def workflow(**options: Any) -> None:
    """Workflow transitions per second and event-to-intent latency, per workflow database."""
    from agentcast.bench.workflow_run import run_workflow_cli

    sys.exit(run_workflow_cli(**options))
